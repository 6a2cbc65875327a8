"""Many referrers attached to one subject at once, then listed: through the proxy (Redis index,
`--fallback-tags write`) against a client that keeps the tag-schema index itself, as legacy
clients do on a registry without the API (read the tag, add, write back, no lock)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson

from bench.content import referrer, referrer_pages, session
from bench.report import Row, Target
from bench.soak import TAG_SETTLE
from bench.stack import Plan, Stack
from bench.stats import Samples
from proxy.devstack.large_subject import bounded
from proxy.devstack.oci_client import (
    INDEX,
    MANIFEST,
    descriptor,
    legacy_tag,
    push_manifest,
    push_subject_image,
)
from proxy.devstack.oci_client import sha256 as digest_of

SCENARIO = "attach"
ARTIFACT_TYPE = "application/vnd.example.sbom.v1"


async def _tag_index(
    http: aiohttp.ClientSession, registry: str, repo: str, subject: bytes
) -> list[dict[str, object]] | None:
    """What the subject's tag-schema index lists; None when the registry would not say
    (Distribution sometimes answers 500 to a read racing a write of the same tag)."""
    async with http.get(
        f"{registry}/v2/{repo}/manifests/{legacy_tag(subject)}", headers={"Accept": INDEX}
    ) as answer:
        if answer.status == 404:
            return []
        if answer.status != 200:
            return None
        listed: list[dict[str, object]] = orjson.loads(await answer.read())["manifests"]
        return listed


async def _listed(
    http: aiohttp.ClientSession, registry: str, repo: str, subject: bytes
) -> set[str]:
    """The digests the tag index lists once the writers are done."""
    for _ in range(5):
        listed = await _tag_index(http, registry, repo, subject)
        if listed is not None:
            return {str(d["digest"]) for d in listed}
    raise RuntimeError(f"{repo}: the registry would not return the tag-schema index")


async def _settled(
    http: aiohttp.ClientSession, registry: str, repo: str, subject: bytes, pushed: set[str]
) -> set[str]:
    """What the tag index lists once the proxy's writes behind the attaches have landed (or
    after TAG_SETTLE seconds)."""
    deadline = time.monotonic() + TAG_SETTLE
    while True:
        listed = await _listed(http, registry, repo, subject)
        if pushed <= listed or time.monotonic() > deadline:
            return listed
        await asyncio.sleep(0.05)


async def _client_side(
    http: aiohttp.ClientSession, registry: str, repo: str, subject: bytes, plan: Plan
) -> tuple[float, int, int]:
    """The legacy way, straight to the registry: (seconds, referrers lost, attaches that saw
    an error). Like the clients, it gives up on an attach whose tag read fails."""
    bodies = [referrer(subject, n) for n in range(plan.attaches)]
    failed = 0

    def job(body: bytes, n: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            nonlocal failed
            listed = None
            if (await push_manifest(http, registry, repo, body)).status == 201:
                listed = await _tag_index(http, registry, repo, subject)
            if listed is None:
                failed += 1
                return
            annotations = {"org.example.n": str(n)}
            listed.append(
                descriptor(MANIFEST, body, artifactType=ARTIFACT_TYPE, annotations=annotations)
            )
            index = orjson.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": listed})
            tagged = await push_manifest(http, registry, repo, index, legacy_tag(subject), INDEX)
            failed += tagged.status != 201

        return run

    started = time.monotonic()
    await bounded(plan.attach_concurrency, (job(body, n) for n, body in enumerate(bodies)))
    listed = await _listed(http, registry, repo, subject)
    elapsed = time.monotonic() - started
    return elapsed, len({digest_of(body) for body in bodies} - listed), failed


async def _through_proxy(
    http: aiohttp.ClientSession, proxy: str, repo: str, subject: bytes, plan: Plan
) -> tuple[float, int]:
    """Attach through the proxy, then discover with the Referrers API: (seconds, lost)."""
    bodies = [referrer(subject, n) for n in range(plan.attaches)]

    def job(body: bytes) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await push_manifest(http, proxy, repo, body)  # a failure shows up as lost

        return run

    started = time.monotonic()
    await bounded(plan.attach_concurrency, (job(body) for body in bodies))
    listed, _ = await referrer_pages(http, proxy, repo, digest_of(subject))
    elapsed = time.monotonic() - started
    return elapsed, len({digest_of(body) for body in bodies} - set(listed))


async def run(stack: Stack, plan: Plan) -> list[Row]:
    proxy = stack.redis_proxy("redis")
    registry = stack.registry.url
    rates: dict[str, list[float]] = {"client": [], "proxy": []}
    lost: dict[str, list[float]] = {"client": [], "proxy": []}
    lost_upstream: list[float] = []
    client_failed: list[float] = []
    async with session(plan.attach_concurrency) as http:
        for n in range(plan.rounds):
            print(f"  attach: round {n + 1}/{plan.rounds}", flush=True)
            repo = f"bench/attach-client-{n}"
            subject = await push_subject_image(http, registry, repo)
            seconds, missing, failed = await _client_side(http, registry, repo, subject, plan)
            rates["client"].append(plan.attaches / seconds)
            lost["client"].append(missing)
            client_failed.append(failed)
            repo = f"bench/attach-proxy-{n}"
            subject = await push_subject_image(http, proxy.url, repo)
            seconds, missing = await _through_proxy(http, proxy.url, repo, subject, plan)
            rates["proxy"].append(plan.attaches / seconds)
            lost["proxy"].append(missing)
            pushed = {digest_of(referrer(subject, i)) for i in range(plan.attaches)}
            in_tag = await _settled(http, registry, repo, subject, pushed)
            lost_upstream.append(len(pushed - in_tag))
    what = f"{plan.attaches} referrers at {plan.attach_concurrency} concurrent"
    return [
        Row(
            SCENARIO,
            f"attach {what} + discover, vs client-side tag fallback",
            "referrers/s",
            Samples.of(rates["proxy"]),
            Samples.of(rates["client"]),
            Target("ratio", ">=", 2.0),
        ),
        Row(
            SCENARIO,
            f"referrers lost, {what} (baseline: client-side tag fallback)",
            "referrers",
            Samples.of(lost["proxy"]),
            Samples.of(lost["client"]),
            Target("value", "<=", 0),
            {
                "proxy_lost_in_registry_tag_index": max(lost_upstream),
                "client_attaches_with_errors": statistics.median(client_failed),
            },
        ),
    ]
