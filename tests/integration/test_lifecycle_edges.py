"""Review of issue 18 (fresh eyes). Each test but the one marked (sound) fails on 37e0730 and
proves a finding."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from proxy.devstack.oci_client import (
    artifact_manifest,
    descriptor,
    legacy_tag,
    listed_referrers,
    manifest_status,
    push_image,
    push_manifest,
    push_subject_image,
    sha256,
)
from proxy.devstack.processes import Registry
from tests.conftest import StartProxy
from tests.harness.fault_relay import Canned, running_relay
from tests.integration.test_notifications import (  # noqa: F401 (fixtures)
    TOKEN,
    Notified,
    notified,
    notified_proxy,
    post,
    within,
)
from tests.integration.test_prune import run_prune

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


async def test_review18_tag_delete_event_blocks_the_endpoint(
    http: aiohttp.ClientSession,
    notified: Notified,  # noqa: F811
    notified_proxy: str,  # noqa: F811
    repo: str,
) -> None:
    """Deleting a referrer straight at Distribution 2.8 also untags its keep tag, which sends a
    delete event with a tag and no digest. The proxy answers 400 to that envelope; Distribution
    retries it forever, so every later event is stuck behind it."""
    registry = notified.registry.url
    image = await push_subject_image(http, registry, repo)
    first = artifact_manifest(image, annotations={"n": "1"})
    assert (await push_manifest(http, registry, repo, first)).status == 201

    async def first_listed() -> bool:
        return await listed_referrers(http, notified_proxy, repo, image) == [sha256(first)]

    await within(2.0, first_listed)
    await asyncio.sleep(0.5)  # the keep tag written by the event worker
    async with http.delete(f"{registry}/v2/{repo}/manifests/{sha256(first)}") as deleted:
        assert deleted.status == 202

    async def gone() -> bool:
        return await listed_referrers(http, notified_proxy, repo, image) == []

    await within(2.0, gone)
    second = artifact_manifest(image, annotations={"n": "2"})
    assert (await push_manifest(http, registry, repo, second)).status == 201

    async def second_listed() -> bool:
        return await listed_referrers(http, notified_proxy, repo, image) == [sha256(second)]

    try:
        await within(5.0, second_listed)
    finally:
        async with http.get(f"{notified_proxy}/metrics") as page:
            text = await page.text()
        # Distribution's retries of the tag-only delete event, each answered 400.
        assert 'notifications_total{answer="invalid"} 0.0' in text


async def test_review18_stale_delete_event_hides_a_live_referrer(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    """Out of order (two registry replicas, or a replay): the delete event of a referrer that
    was pushed again since. The proxy forgets it without checking the registry, and the
    tombstone keeps the tag-schema listing from ever bringing it back."""
    proxy = await start_proxy(registry.url, notifications_token=TOKEN)
    image = await push_subject_image(http, registry.url, repo)
    referrer = artifact_manifest(image)
    assert (await push_manifest(http, proxy, repo, referrer)).status == 201
    assert await listed_referrers(http, proxy, repo, image) == [sha256(referrer)]
    late = {"action": "delete", "target": {"digest": sha256(referrer), "repository": repo}}
    assert await post(http, proxy, orjson.dumps({"events": [late]})) == 202
    await asyncio.sleep(1.0)
    assert await manifest_status(http, registry.url, repo, sha256(referrer)) == 200, (
        "still in registry"
    )
    assert await listed_referrers(http, proxy, repo, image) == [sha256(referrer)]


async def test_review18_cascade_deletes_what_a_tag_schema_index_claims(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    """A tag-schema index is writable by anyone with push right; the cascade trusts its listing
    and deletes, with the deleting caller's credentials, a manifest that is no referrer."""
    proxy = await start_proxy(registry.url, cascade_delete=True)
    image = await push_subject_image(http, registry.url, repo)
    production = await push_image(http, registry.url, repo, "prod", layer=b"prod layer")
    planted = orjson.dumps(
        {"schemaVersion": 2, "mediaType": INDEX, "manifests": [descriptor(MANIFEST, production)]}
    )
    tagged = await push_manifest(
        http, registry.url, repo, planted, legacy_tag(image), media_type=INDEX
    )
    assert tagged.status == 201
    async with http.delete(f"{proxy}/v2/{repo}/manifests/{sha256(image)}") as deleted:
        assert deleted.status == 202
    assert await manifest_status(http, registry.url, repo, "prod") == 200, "an unrelated image went"


async def test_review18_prune_never_counts_an_unclear_answer_as_gone(
    http: aiohttp.ClientSession, registry: Registry, repo: str
) -> None:
    """(Sound: passes.) The subject really is deleted, but the registry's answer to the check is
    a 5xx, a router's 404, NAME_UNKNOWN or a 401: nothing under it is pruned."""
    image = await push_subject_image(http, registry.url, repo)
    referrer = artifact_manifest(image)
    assert (await push_manifest(http, registry.url, repo, referrer, "_referrer.keep")).status == 201
    async with http.delete(f"{registry.url}/v2/{repo}/manifests/{sha256(image)}") as deleted:
        assert deleted.status == 202
    subject_path = f"/v2/{repo}/manifests/{sha256(image)}"
    json = {"Content-Type": "application/json"}
    for canned in (
        Canned(500, b"oops"),
        Canned(404, b"404 page not found\n", {"Content-Type": "text/plain"}),
        Canned(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}', json),
        Canned(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', json),
    ):
        async with running_relay(registry.url) as (relay, relayed):
            relay.answer(lambda r: r.path == subject_path, canned)
            code, out, err = await run_prune(
                "--upstream", relayed, "--repository", repo, "--delete"
            )
        assert "orphans 0, deleted 0" in out, (canned, out, err)
        assert await manifest_status(http, registry.url, repo, sha256(referrer)) == 200
    code, out, _ = await run_prune("--upstream", registry.url, "--repository", repo)
    assert "orphans 1" in out, out  # the control: a true answer does find it


async def test_review18_cascade_then_subject_refused_leaves_image_without_referrers(
    http: aiohttp.ClientSession, start_proxy: StartProxy, registry: Registry, repo: str
) -> None:
    """Referrers go first; when the subject's own DELETE then fails (5xx, not taking effect),
    the image stays but its signatures are gone, and the client is not told (no header)."""
    async with running_relay(registry.url) as (relay, relayed):
        proxy = await start_proxy(relayed, cascade_delete=True)
        image = await push_subject_image(http, proxy, repo)
        signature = artifact_manifest(image, annotations={"kind": "signature"})
        assert (await push_manifest(http, proxy, repo, signature)).status == 201
        subject_path = f"/v2/{repo}/manifests/{sha256(image)}"
        unavailable = b'{"errors":[{"code":"UNAVAILABLE"}]}'
        relay.answer(
            lambda r: r.method == "DELETE" and r.path == subject_path,
            Canned(503, unavailable, {"Content-Type": "application/json"}),
        )
        async with http.delete(f"{proxy}{subject_path}") as deleted:
            header = deleted.headers.get("Referrers-Proxy-Cascade")
    assert await manifest_status(http, registry.url, repo, sha256(image)) == 200, "subject stays"
    remaining = await manifest_status(http, registry.url, repo, sha256(signature))
    assert remaining == 200 or header is not None, "signature deleted and client not told"
