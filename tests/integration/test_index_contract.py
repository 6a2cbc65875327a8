"""One contract for every IndexStore: the embedded one and Redis behave the same."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator, Collection
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from proxy.devstack.processes import Redis
from proxy.devstack.redis_ha import Cluster
from proxy.index import EmbeddedIndex, IndexStore, RedisIndex
from proxy.index.base import TagSync
from proxy.oci.manifest import IMAGE_MANIFEST, Referrer


def sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


SUBJECT = sha256("subject image")
OTHER_SUBJECT = sha256("another subject image")
SBOM, SIG = "application/spdx+json", "application/vnd.example.sig.v1+json"
REPO = "team/app"


def referrer(
    n: int, artifact_type: str | None = SBOM, subject: str = SUBJECT, tag: str = ""
) -> Referrer:
    """A referrer whose digest is a real hash, so digest order is not insertion order."""
    digest = sha256(f"referrer {n}{tag}")
    descriptor: dict[str, Any] = {"mediaType": IMAGE_MANIFEST, "digest": digest, "size": 500 + n}
    if artifact_type is not None:
        descriptor["artifactType"] = artifact_type
    descriptor["annotations"] = {"n": str(n)}
    return Referrer(subject, digest, artifact_type, orjson.dumps(descriptor))


def digests(descriptors: list[bytes]) -> list[str]:
    return [orjson.loads(d)["digest"] for d in descriptors]


def digests_of(referrers: list[Referrer]) -> list[str]:
    return [r.digest for r in referrers]


@pytest.fixture(params=["embedded", "redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[IndexStore]:
    if request.param == "embedded":
        yield EmbeddedIndex()
        return
    if request.param == "cluster":
        cluster: Cluster = request.getfixturevalue("redis_cluster")
        client = RedisCluster.from_url(cluster.seed_url)
        await client.flushdb(target_nodes=RedisCluster.PRIMARIES)
        # Every write waited for on the subject's replica, as the proxy does on a cluster.
        index = RedisIndex(client, replicas=1)
        yield index
        await index.close()
        return
    redis_server: Redis = request.getfixturevalue("redis_server")
    flusher = aioredis.Redis.from_url(redis_server.url)
    await flusher.flushdb()
    await flusher.aclose()
    index = RedisIndex(aioredis.Redis.from_url(redis_server.url))
    yield index
    await index.close()


async def walk(
    store: IndexStore,
    repo: str,
    types: Collection[str],
    limit: int,
    subject: str = SUBJECT,
) -> list[str]:
    """Every page from the start; also checks each page's shape."""
    seen: list[str] = []
    after = 0
    for _ in range(10_000):
        page = await store.page(repo, subject, types, after, limit)
        assert len(page.descriptors) <= limit
        if page.next_after is not None:
            assert len(page.descriptors) == limit, "only a full page may have a next one"
            assert page.next_after > after
        seen += digests(page.descriptors)
        if page.next_after is None:
            return seen
        after = page.next_after
    raise AssertionError("pagination did not end")


# ---- empty answers -------------------------------------------------------------------------


async def test_empty_answers(store: IndexStore) -> None:
    for types in ([], [SBOM], [SBOM, SIG]):
        page = await store.page("nothing/here", SUBJECT, types, 0, 10)
        assert (page.descriptors, page.next_after) == ([], None)


async def test_unknown_subject_or_repository_is_empty_next_to_known_ones(
    store: IndexStore,
) -> None:
    await store.add(REPO, referrer(1))
    for repo, subject in [(REPO, OTHER_SUBJECT), ("team", SUBJECT), ("team/app/x", SUBJECT)]:
        page = await store.page(repo, subject, [], 0, 10)
        assert (page.descriptors, page.next_after) == ([], None)
        assert (await store.page(repo, subject, [SBOM], 0, 10)).descriptors == []


async def test_a_cursor_past_the_end_is_empty(store: IndexStore) -> None:
    await store.add(REPO, referrer(1))
    for after in (10**6, 2**53, 2**63, 10**40):
        page = await store.page(REPO, SUBJECT, [], after, 10)
        assert (page.descriptors, page.next_after) == ([], None)


# ---- add -----------------------------------------------------------------------------------


async def test_add_then_page_returns_exactly_the_descriptor_bytes(store: IndexStore) -> None:
    one = referrer(1)
    await store.add(REPO, one)
    page = await store.page(REPO, SUBJECT, [], 0, 10)
    assert page.descriptors == [one.descriptor]
    assert page.next_after is None
    assert (await store.page(REPO, SUBJECT, [SBOM], 0, 10)).descriptors == [one.descriptor]


async def test_pages_are_in_insertion_order_not_digest_order(store: IndexStore) -> None:
    added = [referrer(n) for n in range(20)]
    assert digests_of(added) != sorted(digests_of(added))
    for r in added:
        await store.add(REPO, r)
    page = await store.page(REPO, SUBJECT, [], 0, 100)
    assert page.descriptors == [r.descriptor for r in added]


async def test_add_is_idempotent_and_keeps_the_position(store: IndexStore) -> None:
    one, two, three = referrer(1), referrer(2), referrer(3)
    for r in (one, two, three, one, two, one):
        await store.add(REPO, r)
    await store.add(REPO, referrer(4))
    expected = [one.descriptor, two.descriptor, three.descriptor, referrer(4).descriptor]
    assert (await store.page(REPO, SUBJECT, [], 0, 10)).descriptors == expected
    assert (await store.page(REPO, SUBJECT, [SBOM], 0, 10)).descriptors == expected
    assert await walk(store, REPO, [], 1) == digests(expected)


async def test_concurrent_adds_record_each_referrer_once(store: IndexStore) -> None:
    added = [referrer(n, SBOM if n % 2 else SIG) for n in range(60)]
    await asyncio.gather(*(store.add(REPO, r) for r in added + added + added))
    seen = await walk(store, REPO, [], 7)
    assert sorted(seen) == sorted(digests_of(added))
    assert len(seen) == len(added)
    assert sorted(await walk(store, REPO, [SBOM, SIG], 7)) == sorted(seen)


# ---- isolation -----------------------------------------------------------------------------


async def test_repositories_are_isolated_even_when_one_name_prefixes_another(
    store: IndexStore,
) -> None:
    repos = ["a", "a/b", "a/b/c", "ab", "a-b", "a.b", "b/a"]
    for n, repo in enumerate(repos):
        await store.add(repo, referrer(n))
    for n, repo in enumerate(repos):
        assert await walk(store, repo, [], 10) == [referrer(n).digest]
        assert await walk(store, repo, [SBOM], 10) == [referrer(n).digest]


async def test_one_referrer_in_two_repositories(store: IndexStore) -> None:
    """A manifest mounted or copied into a second repository is a referrer in both."""
    shared = referrer(1)
    await store.add("a", shared)
    await store.add("a/b", shared)
    await store.add("a/b", referrer(2))
    assert await walk(store, "a", [], 10) == [shared.digest]
    assert await walk(store, "a/b", [], 10) == [shared.digest, referrer(2).digest]
    await store.remove("a", shared.digest)
    assert await walk(store, "a", [], 10) == []
    assert await walk(store, "a", [SBOM], 10) == []
    assert await walk(store, "a/b", [], 10) == [shared.digest, referrer(2).digest]
    assert await walk(store, "a/b", [SBOM], 10) == [shared.digest, referrer(2).digest]


async def test_subjects_are_isolated(store: IndexStore) -> None:
    await store.add(REPO, referrer(1, SBOM))
    await store.add(REPO, referrer(2, SBOM, subject=OTHER_SUBJECT))
    await store.add(REPO, referrer(3, SIG, subject=OTHER_SUBJECT))
    await store.add(REPO, referrer(4, None))
    assert await walk(store, REPO, [], 10) == [referrer(1).digest, referrer(4).digest]
    assert await walk(store, REPO, [SBOM], 10) == [referrer(1).digest]
    assert await walk(store, REPO, [SIG], 10) == []
    assert await walk(store, REPO, [], 10, OTHER_SUBJECT) == [
        referrer(2).digest,
        referrer(3).digest,
    ]
    assert await walk(store, REPO, [SBOM], 10, OTHER_SUBJECT) == [referrer(2).digest]
    assert await walk(store, REPO, [SIG], 10, OTHER_SUBJECT) == [referrer(3).digest]


async def test_a_referrer_that_is_itself_a_subject(store: IndexStore) -> None:
    """A signature of an SBOM: the SBOM is both a referrer and a subject."""
    sbom = referrer(1, SBOM)
    signature = referrer(2, SIG, subject=sbom.digest)
    await store.add(REPO, sbom)
    await store.add(REPO, signature)
    assert await walk(store, REPO, [], 10) == [sbom.digest]
    assert await walk(store, REPO, [], 10, sbom.digest) == [signature.digest]
    await store.remove(REPO, sbom.digest)
    assert await walk(store, REPO, [], 10) == []
    assert await walk(store, REPO, [], 10, sbom.digest) == [signature.digest]


# ---- artifact type filters -------------------------------------------------------------------


async def test_artifact_type_filters(store: IndexStore) -> None:
    await store.add(REPO, referrer(1, SBOM))
    await store.add(REPO, referrer(2, SIG))
    await store.add(REPO, referrer(3, None))
    await store.add(REPO, referrer(4, SBOM))
    await store.add(REPO, referrer(5, "application/vnd.other"))
    assert await walk(store, REPO, [SBOM], 10) == [referrer(1).digest, referrer(4).digest]
    assert await walk(store, REPO, [SIG], 10) == [referrer(2).digest]
    both = [referrer(n).digest for n in (1, 2, 4)]
    assert await walk(store, REPO, [SIG, SBOM], 10) == both
    assert await walk(store, REPO, [SBOM, SIG], 10) == both
    assert await walk(store, REPO, [SBOM, "application/none"], 10) == [
        referrer(1).digest,
        referrer(4).digest,
    ]
    assert await walk(store, REPO, ["application/none"], 10) == []
    assert await walk(store, REPO, ["application/none", "x/y"], 10) == []
    assert await walk(store, REPO, [], 10) == [referrer(n).digest for n in range(1, 6)]


async def test_referrers_without_artifact_type_only_appear_unfiltered(store: IndexStore) -> None:
    untyped = referrer(1, None)
    await store.add(REPO, untyped)
    assert (await store.page(REPO, SUBJECT, [], 0, 10)).descriptors == [untyped.descriptor]
    for types in ([SBOM], ["", SBOM], ["None"], ["null"]):
        assert (await store.page(REPO, SUBJECT, types, 0, 10)).descriptors == []


async def test_a_type_named_twice_lists_each_referrer_once(store: IndexStore) -> None:
    await store.add(REPO, referrer(1, SBOM))
    await store.add(REPO, referrer(2, SBOM))
    assert await walk(store, REPO, [SBOM, SBOM], 10) == [referrer(1).digest, referrer(2).digest]
    assert await walk(store, REPO, (SBOM, SBOM), 1) == [referrer(1).digest, referrer(2).digest]


@pytest.mark.parametrize(
    "odd_type",
    [
        "application/vnd.example+json; version=1",
        "a}b{c",
        "a*",
        "a?",
        "[ab]",
        "x:all",
        "x|y",
        "ünïcödé/✓",
        "type with spaces",
    ],
)
async def test_artifact_types_match_exactly(store: IndexStore, odd_type: str) -> None:
    """Any string may be an artifact type; filters compare whole strings, never patterns."""
    await store.add(REPO, referrer(1, odd_type))
    await store.add(REPO, referrer(2, "a"))
    await store.add(REPO, referrer(3, "ab"))
    await store.add(REPO, referrer(4, odd_type + "x"))
    assert await walk(store, REPO, [odd_type], 10) == [referrer(1).digest]
    assert await walk(store, REPO, ["a"], 10) == [referrer(2).digest]
    assert referrer(1).digest not in await walk(store, REPO, [odd_type[:-1]], 10)
    assert referrer(1).digest not in await walk(store, REPO, [odd_type.upper()], 10)
    await store.remove(REPO, referrer(1).digest)
    assert await walk(store, REPO, [odd_type], 10) == []
    assert await walk(store, REPO, [odd_type + "x"], 10) == [referrer(4).digest]


# ---- remove --------------------------------------------------------------------------------


async def test_remove_forgets_in_every_view(store: IndexStore) -> None:
    await store.add(REPO, referrer(1, SBOM))
    await store.add(REPO, referrer(2, SBOM))
    await store.add(REPO, referrer(3, SIG))
    await store.add(REPO, referrer(4, None))
    await store.remove(REPO, referrer(1).digest)
    await store.remove(REPO, referrer(3).digest)
    await store.remove(REPO, referrer(4).digest)
    assert await walk(store, REPO, [], 10) == [referrer(2).digest]
    assert await walk(store, REPO, [SBOM], 10) == [referrer(2).digest]
    assert await walk(store, REPO, [SIG], 10) == []
    assert await walk(store, REPO, [SBOM, SIG], 10) == [referrer(2).digest]
    assert await walk(store, REPO, [SIG, SBOM], 1) == [referrer(2).digest]


async def test_removing_unknown_digests_changes_nothing(store: IndexStore) -> None:
    await store.add(REPO, referrer(1, SBOM))
    await store.add(REPO, referrer(2, None))
    await store.remove(REPO, sha256("never added"))
    await store.remove(REPO, SUBJECT)  # the subject itself is not a referrer here
    await store.remove("elsewhere", referrer(1).digest)
    await store.remove("team", referrer(1).digest)
    await store.remove(REPO + "/x", referrer(1).digest)
    await store.remove("nothing/here", sha256("nothing"))
    assert await walk(store, REPO, [], 10) == [referrer(1).digest, referrer(2).digest]
    assert await walk(store, REPO, [SBOM], 10) == [referrer(1).digest]


async def test_remove_twice_and_the_last_one(store: IndexStore) -> None:
    only = referrer(1, SBOM)
    await store.add(REPO, only)
    await store.remove(REPO, only.digest)
    await store.remove(REPO, only.digest)
    for types in ([], [SBOM]):
        page = await store.page(REPO, SUBJECT, types, 0, 10)
        assert (page.descriptors, page.next_after) == ([], None)


async def test_a_removed_referrer_added_again_comes_last(store: IndexStore) -> None:
    for n in (1, 2, 3):
        await store.add(REPO, referrer(n, SBOM))
    await store.remove(REPO, referrer(1).digest)
    await store.add(REPO, referrer(1, SBOM))
    expected = [referrer(n).digest for n in (2, 3, 1)]
    assert await walk(store, REPO, [], 10) == expected
    assert await walk(store, REPO, [SBOM], 10) == expected
    assert await walk(store, REPO, [], 1) == expected


async def test_remove_all_then_add_again(store: IndexStore) -> None:
    for n in range(5):
        await store.add(REPO, referrer(n, SIG))
    for n in range(5):
        await store.remove(REPO, referrer(n).digest)
    assert await walk(store, REPO, [], 10) == []
    await store.add(REPO, referrer(9, SBOM))
    assert await walk(store, REPO, [], 10) == [referrer(9).digest]
    assert await walk(store, REPO, [SIG], 10) == []
    assert await walk(store, REPO, [SBOM], 10) == [referrer(9).digest]


# ---- pagination ----------------------------------------------------------------------------


async def test_250_referrers_in_pages_of_100(store: IndexStore) -> None:
    added = [referrer(n) for n in range(250)]
    for r in added:
        await store.add(REPO, r)
    sizes, seen, after = [], [], 0
    while True:
        page = await store.page(REPO, SUBJECT, [], after, 100)
        sizes.append(len(page.descriptors))
        seen += page.descriptors
        if page.next_after is None:
            break
        after = page.next_after
    assert sizes == [100, 100, 50]
    assert seen == [r.descriptor for r in added]


@pytest.mark.parametrize("count", [99, 100, 101, 200])
async def test_the_last_page_says_so(store: IndexStore, count: int) -> None:
    for n in range(count):
        await store.add(REPO, referrer(n))
    first = await store.page(REPO, SUBJECT, [], 0, 100)
    assert len(first.descriptors) == min(count, 100)
    assert (first.next_after is None) == (count <= 100), "no empty page after a full last page"
    seen = await walk(store, REPO, [], 100)
    assert seen == [referrer(n).digest for n in range(count)]


async def test_referrers_added_during_the_walk_come_at_the_end(store: IndexStore) -> None:
    for n in range(250):
        await store.add(REPO, referrer(n))
    seen, after, pages = [], 0, 0
    while True:
        page = await store.page(REPO, SUBJECT, [], after, 100)
        seen += digests(page.descriptors)
        pages += 1
        if pages <= 2:
            await store.add(REPO, referrer(1000 + pages))
            await store.add(REPO, referrer(5))  # already listed: stays where it was
        if page.next_after is None:
            break
        after = page.next_after
    expected = [referrer(n).digest for n in [*range(250), 1001, 1002]]
    assert seen == expected
    assert len(set(seen)) == len(seen)
    assert pages == 3


async def test_removal_during_the_walk(store: IndexStore) -> None:
    for n in range(250):
        await store.add(REPO, referrer(n, SBOM if n % 2 else SIG))
    seen, after, pages = [], 0, 0
    while True:
        page = await store.page(REPO, SUBJECT, [], after, 100)
        seen += digests(page.descriptors)
        pages += 1
        if pages == 1:
            await store.remove(REPO, referrer(10).digest)  # already seen
            await store.remove(REPO, referrer(99).digest)  # the cursor's own referrer
            await store.remove(REPO, referrer(150).digest)  # not yet seen
            await store.add(REPO, referrer(1000))
        if page.next_after is None:
            break
        after = page.next_after
    expected = [referrer(n).digest for n in range(250) if n != 150] + [referrer(1000).digest]
    assert seen == expected
    assert pages == 3
    now = [referrer(n).digest for n in range(250) if n not in (10, 99, 150)]
    now.append(referrer(1000).digest)
    assert await walk(store, REPO, [], 100) == now
    assert await walk(store, REPO, [SIG, SBOM], 7) == now


async def test_filtered_pages_across_interleaved_types(store: IndexStore) -> None:
    kinds = [SBOM, SIG, None, "application/vnd.other"]
    added = [referrer(n, kinds[n % 4]) for n in range(300)]
    for r in added:
        await store.add(REPO, r)

    def of(*types: str | None) -> list[str]:
        return [r.digest for r in added if r.artifact_type in types]

    for limit in (1, 7, 50, 100, 150, 1000):
        assert await walk(store, REPO, [SBOM, SIG], limit) == of(SBOM, SIG)
        assert await walk(store, REPO, [SIG], limit) == of(SIG)
    assert await walk(store, REPO, [SBOM, SIG, "application/vnd.other"], 100) == of(
        SBOM, SIG, "application/vnd.other"
    )
    assert await walk(store, REPO, [], 100) == digests_of(added)


async def test_filtered_walk_while_types_arrive(store: IndexStore) -> None:
    for n in range(150):
        await store.add(REPO, referrer(n, SBOM if n % 3 else SIG))
    seen, after, pages = [], 0, 0
    while True:
        page = await store.page(REPO, SUBJECT, [SBOM, SIG], after, 40)
        seen += digests(page.descriptors)
        pages += 1
        if pages == 1:
            await store.add(REPO, referrer(500, SIG))
            await store.add(REPO, referrer(501, None))
            await store.add(REPO, referrer(502, SBOM))
        if page.next_after is None:
            break
        after = page.next_after
    expected = [referrer(n).digest for n in [*range(150), 500, 502]]
    assert seen == expected


@pytest.mark.parametrize("seed", range(6))
async def test_random_operations_match_a_simple_model(store: IndexStore, seed: int) -> None:
    """Adds (some repeated), removes and filtered walks against a list-based model."""
    rng = random.Random(seed)
    repos, subjects = ["a", "a/b"], [SUBJECT, OTHER_SUBJECT]
    types: list[str | None] = [SBOM, SIG, None]
    pool = [referrer(n, rng.choice(types), rng.choice(subjects), tag=f"/{seed}") for n in range(40)]
    model: dict[str, list[Referrer]] = {repo: [] for repo in repos}
    for _ in range(300):
        repo, chosen = rng.choice(repos), rng.choice(pool)
        if rng.random() < 0.7:
            await store.add(repo, chosen)
            if chosen not in model[repo]:
                model[repo].append(chosen)
        else:
            await store.remove(repo, chosen.digest)
            if chosen in model[repo]:
                model[repo].remove(chosen)
    for repo in repos:
        for subject in subjects:
            for filters in ([], [SBOM], [SIG], [SBOM, SIG]):
                expected = [
                    r.digest
                    for r in model[repo]
                    if r.subject == subject and (not filters or r.artifact_type in filters)
                ]
                for limit in (1, 3, 100):
                    assert await walk(store, repo, filters, limit, subject) == expected


# ---- tombstones: a listing read before a delete brings nothing back ----------------------------


async def test_listed_referrers_are_added_in_order_once(store: IndexStore) -> None:
    listed = [referrer(n, SBOM if n % 2 else None) for n in range(1200)]
    assert await store.add_listed(REPO, SUBJECT, listed[:700]) == set(digests_of(listed[:700]))
    assert await store.add_listed(REPO, SUBJECT, listed) == set(digests_of(listed))
    assert await walk(store, REPO, [], 333) == digests_of(listed)
    assert await walk(store, REPO, [SBOM], 100) == [r.digest for r in listed if r.artifact_type]


async def test_a_removed_referrer_stays_out_of_listings_until_pushed_again(
    store: IndexStore,
) -> None:
    one, two, three = referrer(1), referrer(2), referrer(3)
    await store.add_listed(REPO, SUBJECT, [one, two])
    await store.remove(REPO, one.digest)
    assert await store.add_listed(REPO, SUBJECT, [one, two, three]) == {two.digest, three.digest}
    assert await walk(store, REPO, [], 10) == [two.digest, three.digest]
    await store.add("elsewhere", one)  # a tombstone is per repository
    assert await walk(store, "elsewhere", [], 10) == [one.digest]
    await store.add(REPO, one)
    assert await walk(store, REPO, [], 10) == [two.digest, three.digest, one.digest]
    await store.remove(REPO, one.digest)
    await store.add(REPO, one)
    assert await store.add_listed(REPO, SUBJECT, [one]) == {one.digest}
    assert await walk(store, REPO, [], 10) == [two.digest, three.digest, one.digest]


async def test_removing_what_was_never_listed_leaves_no_tombstone(store: IndexStore) -> None:
    await store.remove(REPO, referrer(1).digest)
    assert await store.add_listed(REPO, SUBJECT, [referrer(1)]) == {referrer(1).digest}


# ---- tag-schema sync marker and the subject lock ----------------------------------------------


async def test_tag_sync_marker(store: IndexStore) -> None:
    assert await store.tag_sync(REPO, SUBJECT) is None
    mark = TagSync(sha256("tag index"), time.time())
    await store.set_tag_sync(REPO, SUBJECT, mark)
    assert await store.tag_sync(REPO, SUBJECT) == mark
    assert await store.tag_sync(REPO + "/x", SUBJECT) is None
    assert await store.tag_sync(REPO, OTHER_SUBJECT) is None
    later = TagSync(sha256("next index"), mark.at + 1.5)
    await store.set_tag_sync(REPO, SUBJECT, later)
    assert await store.tag_sync(REPO, SUBJECT) == later
    await store.set_tag_sync(REPO, SUBJECT, TagSync("", mark.at + 2))
    assert await store.tag_sync(REPO, SUBJECT) is None, "no index upstream: no marker kept"


async def test_subject_lock_serializes_one_subject_only(store: IndexStore) -> None:
    inside: list[str] = []
    overlap = False

    async def hold(subject: str, name: str) -> None:
        nonlocal overlap
        async with store.subject_lock(REPO, subject):
            if any(entry.startswith(subject) for entry in inside):
                overlap = True
            inside.append(f"{subject}:{name}")
            await asyncio.sleep(0.05)
            inside.remove(f"{subject}:{name}")

    started = time.monotonic()
    await asyncio.gather(*(hold(SUBJECT, str(n)) for n in range(4)), hold(OTHER_SUBJECT, "x"))
    assert not overlap
    assert time.monotonic() - started >= 0.2, "four holders of one subject took turns"


async def test_ping(store: IndexStore) -> None:
    await store.ping()


# ---- Redis: an add is one atomic step ----------------------------------------------------------


class _CommandLog(aioredis.Redis):
    """Records the commands the client sends one by one (not the pipelined referrer records),
    and the keys of every script call."""

    sent: list[str]
    script_keys: list[list[str]]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]).upper())
        if self.sent[-1] in ("EVALSHA", "EVAL"):
            self.script_keys.append([_text(k) for k in args[3 : 3 + int(args[2])]])
        return await super().execute_command(*args, **options)


def _text(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)


@pytest.fixture
async def logged(redis_server: Redis) -> AsyncIterator[tuple[_CommandLog, RedisIndex]]:
    client = _CommandLog.from_url(redis_server.url)
    client.sent, client.script_keys = [], []
    await client.flushdb()
    index = RedisIndex(client)
    yield client, index
    await index.close()


async def test_redis_listing_is_one_atomic_server_side_step(
    logged: tuple[_CommandLog, RedisIndex],
) -> None:
    """A position taken apart from the write that uses it lets a slow add commit behind a cursor
    already handed out, so a walk in progress never lists it. One script call leaves no window."""
    client, index = logged
    for n in (1, 2, 1):
        await index.add(REPO, referrer(n, "application/x"))
    await index.remove(REPO, referrer(2).digest)
    assert client.sent.count("EVALSHA") + client.sent.count("EVAL") == 4, client.sent
    assert "MULTI" not in client.sent
    page = await index.page(REPO, SUBJECT, ["application/x"], 0, 10)
    assert digests(page.descriptors) == [referrer(1).digest]


async def test_redis_scripts_touch_one_cluster_slot(logged: tuple[_CommandLog, RedisIndex]) -> None:
    """Redis Cluster refuses a script whose keys live on different slots (CROSSSLOT)."""
    client, index = logged
    await index.add(REPO, referrer(1, SBOM))
    await index.add_listed(REPO, SUBJECT, [referrer(n, SIG if n % 2 else None) for n in range(9)])
    await index.remove(REPO, referrer(1).digest)
    await index.page(REPO, SUBJECT, [SBOM, SIG], 0, 10)
    assert len(client.script_keys) == 4
    for script_keys in client.script_keys:
        assert len({key_slot(k.encode()) for k in script_keys}) == 1, script_keys


async def test_redis_positions_continue_after_the_former_global_counter(
    redis_server: Redis,
) -> None:
    """Subjects recorded before positions were counted per subject keep their order and their
    cursors: the first new referrer comes after the highest position already listed."""
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    old = [referrer(n) for n in range(3)]
    for position, r in zip((7, 40, 41), old, strict=True):
        await client.zadd(f"orp:v1:{{{REPO}|{SUBJECT}}}:all", {r.digest: position})
        await client.zadd(f"orp:v1:{{{REPO}|{SUBJECT}}}:type:{SBOM}", {r.digest: position})
        await client.hset(f"orp:v1:{{{REPO}|{SUBJECT}}}:descriptors", r.digest, r.descriptor)
        record = f"orp:v1:{{{REPO}|{r.digest}}}:referrer"
        await client.hset(record, mapping={"subject": SUBJECT, "artifact_type": SBOM})
    await client.set("orp:v1:position", 41)
    await client.aclose()
    index = RedisIndex(aioredis.Redis.from_url(redis_server.url))
    try:
        first = await index.page(REPO, SUBJECT, [], 0, 2)
        assert first.next_after == 40
        await index.add(REPO, referrer(3))
        rest = await index.page(REPO, SUBJECT, [], first.next_after, 10)
        assert digests(rest.descriptors) == [old[2].digest, referrer(3).digest]
        await index.remove(REPO, old[0].digest)
        assert await walk(index, REPO, [SBOM], 1) == digests_of([*old[1:], referrer(3)])
    finally:
        await index.close()


async def test_a_final_remove_unlists_however_pushes_and_removes_interleave(
    store: IndexStore,
) -> None:
    """Was (Redis): the record went after the subject's script, so a push landing in between
    was listed with no record, and no later delete could unlist it."""
    one = referrer(1)
    await store.add(REPO, one)
    for _ in range(50):
        await asyncio.gather(store.remove(REPO, one.digest), store.add(REPO, one))
    await store.remove(REPO, one.digest)
    assert await walk(store, REPO, [], 10) == []


async def test_a_listing_never_moves_a_referrer_to_another_subject(store: IndexStore) -> None:
    """A tag-schema index may list any manifest; the subject a push recorded stays its own, so
    deleting it unlists it where it really belongs."""
    real = referrer(1)
    await store.add(REPO, real)
    listed = await store.add_listed(REPO, OTHER_SUBJECT, [real, referrer(2)])
    assert listed == {referrer(2).digest}
    assert await walk(store, REPO, [], 10, OTHER_SUBJECT) == [referrer(2).digest]
    await store.remove(REPO, real.digest)
    assert await walk(store, REPO, [], 10) == []


_FORMER_ADD = """
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 0 end
local position = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[3], position, ARGV[1])
redis.call('HSET', KEYS[5], 'subject', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[4], position, ARGV[1])
  redis.call('HSET', KEYS[5], 'artifact_type', ARGV[4])
end
return position
"""


async def test_redis_positions_stay_ordered_while_the_former_release_still_writes(
    redis_server: Redis,
) -> None:
    """A rolling upgrade: a replica of the former release (global counter, its script copied
    here) adds between two adds of this one. Each new position still comes after every listed
    one, so a cursor handed out in between sees what comes later."""
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    await client.set("orp:v1:position", 100_000)
    index = RedisIndex(aioredis.Redis.from_url(redis_server.url))
    try:
        await index.add(REPO, referrer(0))
        former = client.register_script(_FORMER_ADD)
        one = referrer(1)
        await former(
            keys=[
                "orp:v1:position",
                f"orp:v1:{{{REPO}|{SUBJECT}}}:descriptors",
                f"orp:v1:{{{REPO}|{SUBJECT}}}:all",
                f"orp:v1:{{{REPO}|{SUBJECT}}}:type:{SBOM}",
                f"orp:v1:{{{REPO}|{one.digest}}}:referrer",
            ],
            args=[one.digest, one.descriptor, SUBJECT, SBOM],
        )
        first = await index.page(REPO, SUBJECT, [], 0, 2)
        assert first.next_after is None
        await index.add(REPO, referrer(2))
        assert await walk(index, REPO, [], 1) == [referrer(n).digest for n in range(3)]
        after = await index.page(REPO, SUBJECT, [], 100_001, 10)
        assert digests(after.descriptors) == [referrer(2).digest]
    finally:
        await client.aclose()
        await index.close()
