from datetime import timedelta

from aiohttp_client_cache.cache_control import utcnow
from yarl import URL

from proxy.services.manifest_cache import (
    ManifestCache,
    MemoryEntries,
    decode_entry,
    encode_entry,
    entry_size,
    make_entry,
)

UPSTREAM = URL("http://registry:5000")
HEADERS = [
    ("Content-Type", "application/vnd.oci.image.manifest.v1+json"),
    ("Docker-Content-Digest", "sha256:" + "a" * 64),
    ("Etag", '"sha256:' + "a" * 64 + '"'),
    ("X-Odd", "caf\udcff"),  # a byte that is no UTF-8, as aiohttp decodes it (surrogateescape)
]


def entry(body: bytes = b"{}", seconds: float = 60) -> object:
    return make_entry(UPSTREAM / "v2/a/manifests/x", HEADERS, body, seconds)


def test_entry_round_trips_without_pickle() -> None:
    original = make_entry(UPSTREAM, HEADERS, b'{"a":1}\n\x00', 60)
    data = encode_entry(original)
    assert b"pickle" not in data
    assert not data.startswith(b"\x80")
    copy = decode_entry(data)
    assert copy._body == original._body
    assert copy.raw_headers == original.raw_headers
    assert list(copy.headers.items()) == HEADERS
    assert copy.expires == original.expires
    assert copy.status == 200
    assert copy.method == "GET"


def test_an_entry_holds_no_request_headers() -> None:
    made = make_entry(UPSTREAM, HEADERS, b"{}", 60)
    assert made.request_raw_headers == ()
    assert b"Authorization" not in encode_entry(made)


async def test_memory_is_bounded_by_bytes_least_recently_used_out() -> None:
    body = b"x" * 1000
    one = entry_size(make_entry(UPSTREAM, HEADERS, body, 60))
    storage = MemoryEntries(3 * one)
    for key in "abc":
        await storage.write(key, make_entry(UPSTREAM, HEADERS, body, 60))
    await storage.read("a")  # now the most recently used
    await storage.write("d", make_entry(UPSTREAM, HEADERS, body, 60))
    assert {k async for k in storage.keys()} == {"a", "c", "d"}  # noqa: SIM118 (async)
    assert await storage.size() == 3


async def test_memory_delete_leaves_a_tombstone_that_refuses_a_late_fill() -> None:
    storage = MemoryEntries(1 << 20)
    await storage.write("k", make_entry(UPSTREAM, HEADERS, b"{}", 60))
    await storage.delete("k")
    await storage.write("k", make_entry(UPSTREAM, HEADERS, b"{}", 60))
    assert await storage.read("k") is None
    await storage.write("other", make_entry(UPSTREAM, HEADERS, b"{}", 60))
    assert await storage.contains("other")


async def test_expired_entries_are_not_served_and_are_deleted() -> None:
    storage = MemoryEntries(1 << 20)
    cache = ManifestCache(storage, UPSTREAM, 60)
    key = cache.key("a", "sha256:" + "a" * 64)
    stale = make_entry(UPSTREAM, HEADERS, b"{}", 60)
    stale.expires = utcnow() - timedelta(seconds=1)
    await storage.write(key, stale)
    assert await cache.lookup(key) is None
    assert not await storage.contains(key)


def test_keys_differ_by_repository_and_digest() -> None:
    cache = ManifestCache(MemoryEntries(1 << 20), UPSTREAM, 60)
    d1, d2 = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    keys = {cache.key("a", d1), cache.key("b", d1), cache.key("a", d2), cache.key("a/b", d1)}
    assert len(keys) == 4
    assert cache.key("a", d1) == cache.key("a", d1)


async def test_a_slow_fill_is_not_stored() -> None:
    storage = MemoryEntries(1 << 20)
    cache = ManifestCache(storage, UPSTREAM, 60)
    digest = "sha256:" + "a" * 64
    await cache.store("a", digest, HEADERS, b"{}", started=-1e9)
    assert await storage.size() == 0
