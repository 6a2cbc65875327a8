import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.manifest import compute_digest
from proxy.names import digest_error, is_digest, is_repository_name

SHA256 = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "name",
    ["a", "library/ubuntu", "a.b_c__d-e---f/g0", "x" * 255, "0/1/2/3", "team/app/sub-repo"],
)
def test_valid_repository_names(name: str) -> None:
    assert is_repository_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "A",
        "a/",
        "/a",
        "a//b",
        "a/../b",
        "..",
        "-a",
        "a-",
        "a___b",
        "a._b",
        "a b",
        "x" * 256,
        "a/B",
        "a:b",
        "a%2Fb",
    ],
)
def test_invalid_repository_names(name: str) -> None:
    assert not is_repository_name(name)


@pytest.mark.parametrize(
    "digest",
    [
        SHA256,
        "sha512:" + "0" * 128,
        "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
        "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
        "blake3:" + "f" * 64,
    ],
)
def test_valid_digests(digest: str) -> None:
    assert digest_error(digest) is None
    assert is_digest(digest)


@pytest.mark.parametrize(
    ("digest", "why"),
    [
        ("sha256:" + "A" * 64, "64 lowercase hex"),
        ("sha256:" + "a" * 63, "64 lowercase hex"),
        ("sha256:" + "a" * 65, "64 lowercase hex"),
        ("sha512:" + "a" * 64, "128 lowercase hex"),
        ("sha256:", "<algorithm>:<encoded>"),
        ("sha256", "<algorithm>:<encoded>"),
        ("latest", "<algorithm>:<encoded>"),
        ("SHA256:" + "a" * 64, "<algorithm>:<encoded>"),
        (":abc", "<algorithm>:<encoded>"),
        ("sha256:abc/def", "<algorithm>:<encoded>"),
        ("sha256::" + "a" * 64, "<algorithm>:<encoded>"),
    ],
)
def test_invalid_digests_say_why(digest: str, why: str) -> None:
    problem = digest_error(digest)
    assert problem is not None
    assert why in problem
    assert not is_digest(digest)


@given(st.binary(max_size=512), st.sampled_from(["sha256", "sha512"]))
def test_every_computed_digest_is_valid(data: bytes, algorithm: str) -> None:
    digest = compute_digest(data, algorithm)
    assert is_digest(digest)
    assert digest.split(":")[1] == hashlib.new(algorithm, data).hexdigest()


_COMPONENT = st.from_regex(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*", fullmatch=True)


@given(st.lists(_COMPONENT, min_size=1, max_size=4))
def test_names_built_from_the_grammar_are_accepted(components: list[str]) -> None:
    name = "/".join(components)
    assert is_repository_name(name) == (len(name) <= 255)
