"""Nobody reads through the proxy what the registry would not show them.

Two real registries: one with htpasswd (Basic) and one with Distribution's token auth, whose
token service issues signed JWTs with repository scopes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from proxy.devstack.oci_client import (
    EMPTY_JSON,
    artifact_manifest,
    basic_auth,
    descriptor,
    push_manifest,
    settled_tag_index,
    sha256,
)
from proxy.devstack.processes import (
    Registry,
    TokenAuth,
    free_port,
    make_tls_files,
    running_registry,
)
from tests.conftest import AUTH_PASSWORD, AUTH_USER, StartProxy
from tests.harness.fault_relay import Canned, running_relay
from tests.harness.token_service import TokenService

SERVICE, ISSUER = "test-registry", "test-issuer"
PASSWORDS = {"writer": "w-pass", "reader": "r-pass", "stranger": "s-pass"}


@pytest.fixture(scope="module")
def token_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Path, int]]:
    """A token-auth registry; its token service is started per test on the port it names."""
    workdir = tmp_path_factory.mktemp("token-registry")
    signer = make_tls_files(workdir / "signer")
    port = free_port()
    auth = TokenAuth(f"http://127.0.0.1:{port}/token", SERVICE, ISSUER, signer.ca)
    with running_registry(workdir, token=auth) as registry:
        yield registry, signer.ca, port


@pytest.fixture
async def tokens(
    token_setup: tuple[Registry, Path, int],
) -> AsyncIterator[TokenService]:
    registry, cert, port = token_setup
    service = TokenService(cert.with_name("ca.key"), cert, SERVICE, ISSUER, PASSWORDS, {})
    server = TestServer(service.app(), host="127.0.0.1", port=port)
    await server.start_server()
    yield service
    await server.close()


def challenge_params(header: str) -> dict[str, str]:
    assert header.startswith("Bearer ")
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


async def get_token(
    http: aiohttp.ClientSession, challenge: str, user: str | None, password: str = ""
) -> tuple[int, str | None]:
    """The client's half of the token flow: ask the realm for the challenged scope."""
    params = challenge_params(challenge)
    headers = basic_auth(user, password) if user else {}
    query = {"service": params["service"], "scope": params["scope"]}
    async with http.get(params["realm"], params=query, headers=headers) as response:
        if response.status != 200:
            return response.status, None
        return 200, (await response.json())["token"]


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def writer_pushes_referrer(
    http: aiohttp.ClientSession, proxy: str, realm: str, repo: str
) -> tuple[bytes, bytes, str]:
    """The writer attaches an SBOM through the proxy with a pull,push token."""
    scope = f"repository:{repo}:pull,push"
    challenge = f'Bearer realm="{realm}",service="{SERVICE}",scope="{scope}"'
    _, token = await get_token(http, challenge, "writer", PASSWORDS["writer"])
    auth = bearer(token)
    image = orjson.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.empty.v1+json", EMPTY_JSON),
            "layers": [],
        }
    )
    async with http.post(f"{proxy}/v2/{repo}/blobs/uploads/", headers=auth) as started:
        assert started.status == 202, await started.text()
        location = started.headers["Location"]
    async with http.put(
        location,
        params={"digest": sha256(EMPTY_JSON)},
        data=EMPTY_JSON,
        headers={**auth, "Content-Type": "application/octet-stream"},
    ) as done:
        assert done.status == 201
    async with http.put(
        f"{proxy}/v2/{repo}/manifests/v1",
        data=image,
        headers={**auth, "Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    ) as pushed:
        assert pushed.status == 201
    referrer = artifact_manifest(image)
    async with http.put(
        f"{proxy}/v2/{repo}/manifests/{sha256(referrer)}",
        data=referrer,
        headers={**auth, "Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    ) as attached:
        assert attached.status == 201, await attached.text()
        assert attached.headers["OCI-Subject"] == sha256(image)
    return image, referrer, token or ""


async def test_token_auth_matrix(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    token_setup: tuple[Registry, Path, int],
    tokens: TokenService,
    repo: str,
) -> None:
    registry, _, port = token_setup
    tokens.policy.update(
        {
            "writer": {repo: {"pull", "push"}},
            "reader": {repo: {"pull"}},
            "stranger": {f"{repo}-other": {"pull", "push"}},
        }
    )
    proxy = await start_proxy(registry.url)
    realm = f"http://127.0.0.1:{port}/token"
    image, referrer, writer_token = await writer_pushes_referrer(http, proxy, realm, repo)
    url = f"{proxy}/v2/{repo}/referrers/{sha256(image)}"

    async with http.get(url) as anonymous:
        assert anonymous.status == 401
        challenge = anonymous.headers["WWW-Authenticate"]
        assert challenge_params(challenge)["scope"] == f"repository:{repo}:pull"
        assert sha256(referrer).encode() not in await anonymous.read()

    assert (await get_token(http, challenge, "reader", "wrong"))[0] == 401

    _, anonymous_token = await get_token(http, challenge, None)
    async with http.get(url, headers=bearer(anonymous_token)) as scopeless:
        assert scopeless.status == 401, "a token without the scope reads nothing"
        assert sha256(referrer).encode() not in await scopeless.read()

    other = challenge.replace(f"repository:{repo}:pull", f"repository:{repo}-other:pull")
    _, stranger_token = await get_token(http, other, "stranger", PASSWORDS["stranger"])
    async with http.get(url, headers=bearer(stranger_token)) as stranger:
        assert stranger.status == 401, "a token for another repository reads nothing"
        assert sha256(referrer).encode() not in await stranger.read()

    _, reader_token = await get_token(http, challenge, "reader", PASSWORDS["reader"])
    async with http.get(url, headers=bearer(reader_token)) as reader:
        assert reader.status == 200
        listed = [d["digest"] for d in orjson.loads(await reader.read())["manifests"]]
    assert listed == [sha256(referrer)]

    own = url.replace(f"/v2/{repo}/", f"/v2/{repo}-other/")
    async with http.get(own, headers=bearer(stranger_token)) as granted:
        assert granted.status == 200, "the stranger may read their own repository"
    async with http.get(url, headers=bearer(stranger_token)) as again:
        assert again.status == 401, "a grant for one repository opens no other"
        assert sha256(referrer).encode() not in await again.read()

    sneaky = artifact_manifest(image, annotations={"by": "reader"})
    refused = await push_manifest_with(http, proxy, repo, sneaky, reader_token)
    assert refused == 401, "a pull-only token cannot attach"
    async with http.get(url, headers=bearer(reader_token)) as after:
        listed = [d["digest"] for d in orjson.loads(await after.read())["manifests"]]
    assert listed == [sha256(referrer)], "a refused attach leaves the index unchanged"

    tagged = await settled_tag_index(
        http, registry.url, repo, image, [sha256(referrer)], headers=bearer(writer_token)
    )
    assert tagged[0] == 200, "the tag-schema write ran with the writer's own token"


async def push_manifest_with(
    http: aiohttp.ClientSession, proxy: str, repo: str, body: bytes, token: str | None
) -> int:
    async with http.put(
        f"{proxy}/v2/{repo}/manifests/{sha256(body)}",
        data=body,
        headers={**bearer(token), "Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    ) as response:
        return response.status


async def test_basic_auth_referrers_need_valid_credentials(
    http: aiohttp.ClientSession, start_proxy: StartProxy, auth_registry: Registry, repo: str
) -> None:
    proxy = await start_proxy(auth_registry.url)
    good = basic_auth(AUTH_USER, AUTH_PASSWORD)
    subject = b'{"some":"subject"}'
    async with http.post(f"{proxy}/v2/{repo}/blobs/uploads/", headers=good) as started:
        location = started.headers["Location"]
    async with http.put(
        location, params={"digest": sha256(EMPTY_JSON)}, data=EMPTY_JSON, headers=good
    ) as done:
        assert done.status == 201
    referrer = artifact_manifest(subject)
    assert (await push_manifest(http, proxy, repo, referrer, headers=good)).status == 201
    url = f"{proxy}/v2/{repo}/referrers/{sha256(subject)}"
    async with http.get(url, headers=good) as allowed:
        assert allowed.status == 200
        assert sha256(referrer).encode() in await allowed.read()
    async with http.get(f"{auth_registry.url}/v2/{repo}/manifests/{sha256(subject)}") as direct:
        direct_challenge = direct.headers["WWW-Authenticate"]
    for headers in ({}, basic_auth(AUTH_USER, "wrong")):
        async with http.get(url, headers=headers) as refused:
            assert refused.status == 401
            assert refused.headers["WWW-Authenticate"] == direct_challenge
            assert b"manifests" not in await refused.read()


async def test_token_auth_fails_closed_while_the_registry_is_overloaded(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    token_setup: tuple[Registry, Path, int],
    tokens: TokenService,
    repo: str,
) -> None:
    """A 503 or 429 to the pull check is no permission, and is not remembered: a stranger's
    token reads nothing during the outage, and is refused by the registry after it."""
    registry, _, port = token_setup
    tokens.policy.update(
        {
            "writer": {repo: {"pull", "push"}},
            "reader": {repo: {"pull"}},
            "stranger": {f"{repo}-other": {"pull"}},
        }
    )
    realm = f"http://127.0.0.1:{port}/token"
    image, referrer, _ = await writer_pushes_referrer(
        http, await start_proxy(registry.url), realm, repo
    )
    challenge = f'Bearer realm="{realm}",service="{SERVICE}",scope="repository:{repo}:pull"'
    _, reader_token = await get_token(http, challenge, "reader", PASSWORDS["reader"])
    other = challenge.replace(f"repository:{repo}:pull", f"repository:{repo}-other:pull")
    _, stranger_token = await get_token(http, other, "stranger", PASSWORDS["stranger"])
    async with running_relay(registry.url) as (relay, url):
        proxy = await start_proxy(url)
        target = f"{proxy}/v2/{repo}/referrers/{sha256(image)}"
        check = f"/manifests/{sha256(image)}"
        for canned in (Canned(503, b""), Canned(429, b"", {"Retry-After": "2"}), Canned(500)):
            relay.answer(lambda r: r.path.endswith(check), canned)
            for token in (None, stranger_token, reader_token):
                async with http.get(target, headers=bearer(token)) as answer:
                    assert answer.status == (429 if canned.status == 429 else 503)
                    assert sha256(referrer).encode() not in await answer.read()
            relay.clear()
        async with http.get(target, headers=bearer(stranger_token)) as stranger:
            assert stranger.status == 401
            assert sha256(referrer).encode() not in await stranger.read()
        async with http.get(target, headers=bearer(reader_token)) as reader:
            assert reader.status == 200
            assert sha256(referrer).encode() in await reader.read()
