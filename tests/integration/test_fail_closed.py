"""Default-deny, against the real htpasswd registry: no answer but a proof of permission shows
a referrer, whatever the upstream says, whichever way the answer is built, however the target
is spelled; and the client never picks the host the proxy talks to.

A relay in front of the registry (tests/harness/fault_relay.py) makes the answers Distribution
gives only under load (429, 5xx), for odd routes (its router's 404) or that another registry
might give; everything else reaches the real registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy

from proxy.devstack.oci_client import (
    EMPTY_JSON,
    INDEX,
    artifact_manifest,
    basic_auth,
    push_manifest,
    sha256,
)
from proxy.devstack.processes import Redis, Registry, free_port
from tests.conftest import AUTH_PASSWORD, AUTH_USER, StartProxy
from tests.harness.fault_relay import Canned, FaultRelay, running_relay

ALICE = basic_auth(AUTH_USER, AUTH_PASSWORD)
STRANGERS = ({}, basic_auth(AUTH_USER, "wrong"), {"Authorization": "Bearer forged"})
MARKER = "secret-annotation-value"
PROBE = "/v2/referrers-proxy-probe/"
ROUTER_404 = Canned(404, b"404 page not found\n", {"Content-Type": "text/plain; charset=utf-8"})


def oci_error(code: str) -> bytes:
    return orjson.dumps({"errors": [{"code": code, "message": code.lower()}]})


# Every class of answer a registry may give to the pull check that proves nothing: the proxy
# must refuse (401/403 relayed, 429, 503) or, for NAME_UNKNOWN, list nothing.
UNPROVEN = [
    Canned(429, oci_error("TOOMANYREQUESTS"), {"Retry-After": "7"}),
    Canned(500, oci_error("UNKNOWN")),
    Canned(502, b"bad gateway"),
    Canned(503, b"", {"Retry-After": "3"}),
    Canned(504, b""),
    ROUTER_404,
    Canned(404, b""),
    Canned(404, oci_error("NAME_UNKNOWN"), {"Content-Type": "application/json"}),
    Canned(404, oci_error("BLOB_UNKNOWN"), {"Content-Type": "application/json"}),
    Canned(400, oci_error("NAME_INVALID")),
    Canned(405, b""),
    Canned(301, b"", {"Location": "http://127.0.0.1:9/v2/"}),
    Canned(304, b""),
    Canned(204, b""),
    Canned(202, b""),
    Canned(401, oci_error("UNAUTHORIZED"), {"WWW-Authenticate": 'Basic realm="test-realm"'}),
    Canned(403, oci_error("DENIED")),
]


@dataclass(frozen=True)
class Attached:
    repo: str
    subject: str
    referrer: str


@dataclass(frozen=True)
class Route:
    """One way the proxy builds a referrers answer, and a proxy set up to take it."""

    name: str
    proxy: str


def check_of(subject: str) -> Callable[[web.Request], bool]:
    """The proxy's pull check: a HEAD or GET of the subject's manifest."""

    def matches(request: web.Request) -> bool:
        return request.method in ("GET", "HEAD") and request.path.endswith(f"/manifests/{subject}")

    return matches


def leaked(body: bytes, attached: Attached) -> bool:
    return attached.referrer.encode() in body or MARKER.encode() in body


@pytest.fixture
async def relay(auth_registry: Registry) -> AsyncIterator[tuple[FaultRelay, str]]:
    async with running_relay(auth_registry.url) as started:
        yield started


@pytest.fixture
async def attached(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    auth_registry: Registry,
    redis_server: Redis,
    repo: str,
) -> Attached:
    """Alice attaches an annotated referrer through a proxy sharing Redis with the ones tested;
    write-through also lists it in the registry's tag-schema index."""
    writer = await start_proxy(auth_registry.url, redis_url=redis_server.url)
    subject = b'{"private":"subject"}'
    async with http.post(f"{writer}/v2/{repo}/blobs/uploads/", headers=ALICE) as started:
        location = started.headers["Location"]
    async with http.put(
        location, params={"digest": sha256(EMPTY_JSON)}, data=EMPTY_JSON, headers=ALICE
    ) as done:
        assert done.status == 201
    referrer = artifact_manifest(subject, annotations={"note": MARKER})
    assert (await push_manifest(http, writer, repo, referrer, headers=ALICE)).status == 201
    return Attached(repo, sha256(subject), sha256(referrer))


async def every_path(
    start_proxy: StartProxy, relay: FaultRelay, url: str, redis_server: Redis
) -> list[Route]:
    """The index; the registry's tag-schema index while the index is down; a native upstream's
    answer merged with the index; an upstream whose Referrers API is not yet known."""
    paths = []
    relay.answer(lambda r: r.path.startswith(PROBE), ROUTER_404)
    paths.append(Route("index", await start_proxy(url, redis_url=redis_server.url)))
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    paths.append(Route("index down", await start_proxy(url, redis_url=dead_redis)))
    relay.clear()
    empty = orjson.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": []})
    relay.answer(lambda r: "/referrers/" in r.path, Canned(200, empty, {"Content-Type": INDEX}))
    paths.append(Route("native merge", await start_proxy(url, redis_url=redis_server.url)))
    relay.clear()
    relay.answer(
        lambda r: r.path.startswith(PROBE), Canned(401, b"", {"WWW-Authenticate": "Basic x"})
    )
    paths.append(Route("native unknown", await start_proxy(url, redis_url=redis_server.url)))
    relay.clear()
    return paths


async def get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[int, bytes, CIMultiDictProxy[str]]:
    async with http.get(url, headers=headers) as answer:
        return answer.status, await answer.read(), answer.headers


async def test_no_answer_but_a_proof_shows_a_referrer_on_any_path(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    relay: tuple[FaultRelay, str],
    redis_server: Redis,
    attached: Attached,
) -> None:
    fault, url = relay
    paths = await every_path(start_proxy, fault, url, redis_server)
    native_answer = orjson.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": []})
    for path in paths:
        if path.name == "native merge":
            fault.answer(
                lambda r: "/referrers/" in r.path,
                Canned(200, native_answer, {"Content-Type": INDEX}),
            )
        target = f"{path.proxy}/v2/{attached.repo}/referrers/{attached.subject}"
        for canned in UNPROVEN:
            fault.answer(check_of(attached.subject), canned)
            for caller in STRANGERS:
                status, body, headers = await get(http, target, caller)
                where = f"{path.name}, check answered {canned.status} {canned.body[:30]!r}"
                assert not leaked(body, attached), where
                assert status in (200, 401, 403, 429, 503), where
                if status == 200:
                    assert orjson.loads(body)["manifests"] == [], where
                if status in (429, 503):
                    assert headers["Retry-After"].isdigit(), where
                    assert orjson.loads(body)["errors"][0]["code"] in (
                        "TOOMANYREQUESTS",
                        "UNAVAILABLE",
                    )
            fault.rules.pop()
        for caller in STRANGERS:
            status, body, headers = await get(http, target, caller)
            assert status == 401, f"{path.name}: nothing unproven was remembered"
            assert headers["WWW-Authenticate"] == 'Basic realm="test-realm"'
            assert orjson.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
            assert not leaked(body, attached)
        # The control comes last: a permitted request settles a native-unknown upstream, and
        # every stranger above must have met that path as it was.
        status, body, _ = await get(http, target, ALICE)
        assert status == 200, f"{path.name}: control, alice may pull"
        assert leaked(body, attached), f"{path.name}: control, alice sees the referrer"
        fault.clear()


async def test_rate_limit_and_outage_are_relayed_not_remembered(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    relay: tuple[FaultRelay, str],
    redis_server: Redis,
    attached: Attached,
) -> None:
    fault, url = relay
    proxy = await start_proxy(url, redis_url=redis_server.url)
    target = f"{proxy}/v2/{attached.repo}/referrers/{attached.subject}"
    fault.answer(check_of(attached.subject), UNPROVEN[0])
    status, body, headers = await get(http, target, ALICE)
    assert (status, headers["Retry-After"]) == (429, "7")
    assert not leaked(body, attached)
    fault.clear()
    fault.answer(check_of(attached.subject), Canned(503, b""))
    status, body, headers = await get(http, target, {})
    assert (status, headers["Retry-After"]) == (503, "1")
    assert orjson.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    fault.clear()
    status, body, _ = await get(http, target, {})
    assert status == 401, "the registry is back and says no: so does the proxy"
    status, body, _ = await get(http, target, ALICE)
    assert status == 200
    assert leaked(body, attached)


async def test_an_unknown_repository_lists_nothing_and_the_all_zero_probe_is_answered(
    http: aiohttp.ClientSession, start_proxy: StartProxy, auth_registry: Registry, repo: str
) -> None:
    """Distribution answers MANIFEST_UNKNOWN after authorizing (the proof), for unknown
    subjects and unknown repositories alike: the 200 that oras' and cosign's probes expect."""
    proxy = await start_proxy(auth_registry.url)
    zero = "sha256:" + "0" * 64
    status, body, _ = await get(http, f"{proxy}/v2/{repo}-nowhere/referrers/{zero}", ALICE)
    assert status == 200
    assert orjson.loads(body)["manifests"] == []
    status, _, _ = await get(http, f"{proxy}/v2/{repo}-nowhere/referrers/{zero}", {})
    assert status == 401


async def raw_request(port: int, request_line: str, body: bytes = b"") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"{request_line}\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
        head += "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def hostile_targets(repo: str, subject: str, evil_port: int) -> list[str]:
    hexpart = subject.removeprefix("sha256:")
    return [
        f"/v2/{repo}/referr%65rs/{subject}",
        f"/v2/{repo}/referr%65rs/-x",
        f"/%762/{repo}/referrers/{subject}",
        f"/v2/{repo}/referrers/sha256%3A{hexpart}",
        f"/v2/{repo}%2Freferrers/{subject}",
        f"/v2/{repo}/./referrers/{subject}",
        f"/v2/x/../{repo}/referrers/{subject}",
        f"/v2//{repo}/referrers/{subject}",
        f"/v2/{repo}/referrers/-x",
        f"/v2/{repo}/referrers/sha256:{hexpart[:10]}",
        f"/v2/{repo}/referrers/{subject}/",
        f"/v2/{repo}/referrers/{subject}#x",
        f"/V2/{repo}/referrers/{subject}",
        f"http://127.0.0.1:{evil_port}/v2/{repo}/referrers/{subject}",
        f"pany://127.0.0.1:{evil_port}/v2/{repo}/referrers/{subject}",
        f"//127.0.0.1:{evil_port}/v2/{repo}/referrers/{subject}",
    ]


@pytest.fixture
async def evil() -> AsyncIterator[tuple[list[str], int]]:
    """A server of the attacker's: says yes to everything, and records what reached it."""
    seen: list[str] = []

    async def yes(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        return web.Response(status=201, headers={"Docker-Content-Digest": "sha256:" + "e" * 64})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", yes)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield seen, server.port or 0
    await server.close()


async def test_encoded_and_malformed_targets_open_nothing(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    relay: tuple[FaultRelay, str],
    redis_server: Redis,
    attached: Attached,
    evil: tuple[list[str], int],
) -> None:
    fault, url = relay
    seen, evil_port = evil
    for path in await every_path(start_proxy, fault, url, redis_server):
        port = int(path.proxy.rsplit(":", 1)[1])
        for target in hostile_targets(attached.repo, attached.subject, evil_port):
            status, body = await raw_request(port, f"GET {target} HTTP/1.1")
            assert not leaked(body, attached), f"{path.name}: {target}"
            assert status in (400, 401, 404), f"{path.name}: {target} -> {status}"
            plain = f"{path.proxy}/v2/{attached.repo}/referrers/{attached.subject}"
            status, body, _ = await get(http, plain, {})
            assert status == 401, f"{path.name}: {target} opened the plain path"
            assert not leaked(body, attached)
    assert seen == [], "the proxy never connected where a client pointed it"


async def test_absolute_form_cannot_choose_the_host_or_forge_a_referrer(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    auth_registry: Registry,
    redis_server: Redis,
    attached: Attached,
    evil: tuple[list[str], int],
) -> None:
    seen, evil_port = evil
    proxy = await start_proxy(auth_registry.url, redis_url=redis_server.url)
    port = int(proxy.rsplit(":", 1)[1])
    subject = b'{"private":"subject"}'
    forged = artifact_manifest(subject, annotations={"forged": "signature"})
    for form in (f"http://127.0.0.1:{evil_port}", f"pany://127.0.0.1:{evil_port}"):
        status, body = await raw_request(
            port, f"PUT {form}/v2/{attached.repo}/manifests/{sha256(forged)} HTTP/1.1", forged
        )
        assert status == 400
        assert orjson.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
    assert seen == []
    status, body, _ = await get(
        http, f"{proxy}/v2/{attached.repo}/referrers/{attached.subject}", ALICE
    )
    assert status == 200
    assert sha256(forged).encode() not in body


async def test_reads_of_a_refused_caller_leave_no_grant_in_redis(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    auth_registry: Registry,
    redis_server: Redis,
    attached: Attached,
) -> None:
    """Grants live in the process only (a hash of credential and repository), never in the
    shared index: a refused caller cannot plant one for other replicas."""
    proxy = await start_proxy(auth_registry.url, redis_url=redis_server.url)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        before = {key async for key in client.scan_iter("*")}
        for _ in range(3):
            status, _, _ = await get(
                http, f"{proxy}/v2/{attached.repo}/referrers/{attached.subject}", {}
            )
            assert status == 401
        assert {key async for key in client.scan_iter("*")} == before
    finally:
        await client.aclose()


async def test_a_404_nobody_authorized_deletes_nothing_from_the_index(
    http: aiohttp.ClientSession,
    start_proxy: StartProxy,
    relay: tuple[FaultRelay, str],
    redis_server: Redis,
    attached: Attached,
) -> None:
    """A DELETE answered by a router or ingress 404 (or a 5xx, then such a 404 on the re-read)
    is no proof the referrer is gone: the index keeps listing it."""
    fault, url = relay
    proxy = await start_proxy(url, redis_url=redis_server.url)
    target = f"{proxy}/v2/{attached.repo}/manifests/{attached.referrer}"
    listing = f"{proxy}/v2/{attached.repo}/referrers/{attached.subject}"
    fault.answer(lambda r: r.method == "DELETE", ROUTER_404)
    async with http.delete(target) as deleted:
        assert deleted.status == 404
    fault.clear()
    fault.answer(lambda r: r.method == "DELETE", Canned(502, b"bad gateway"))
    fault.answer(lambda r: r.method == "GET" and r.path == target.split(proxy)[1], ROUTER_404)
    async with http.delete(target) as deleted:
        assert deleted.status == 502
    fault.clear()
    status, body, _ = await get(http, listing, ALICE)
    assert status == 200
    assert leaked(body, attached), "still listed: the registry still has it"


@pytest.mark.parametrize("host", ["evil.example:abc", ""])
async def test_a_host_header_no_url_can_be_made_of_is_a_400(
    start_proxy: StartProxy, auth_registry: Registry, host: str
) -> None:
    proxy = await start_proxy(auth_registry.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(proxy.rsplit(":", 1)[1]))
    writer.write(f"GET /v2/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:60]
