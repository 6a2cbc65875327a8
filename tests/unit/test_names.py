"""Repository names and digests against the distribution-spec and image-spec grammars."""

import hashlib
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.oci.manifest import compute_digest
from proxy.oci.names import MAX_NAME_LENGTH, digest_error, is_digest, is_repository_name

SHA256 = "sha256:" + "a" * 64

# The grammars as the specs write them, kept apart from proxy/oci/names.py on purpose.
SPEC_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
SPEC_NAME = re.compile(rf"{SPEC_COMPONENT}(\/{SPEC_COMPONENT})*", re.ASCII)
SPEC_DIGEST = re.compile(r"[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+", re.ASCII)
SPEC_HEX = {"sha256": 64, "sha512": 128}


def name_of_255_chars() -> str:
    """A 255-character name of several components: 63 * "abc/" + "abc"."""
    name = "abc/" * 63 + "abc"
    assert len(name) == 255
    return name


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "0",
        "ubuntu",
        "library/ubuntu",
        "a.b_c__d-e---f/g0",
        "a.b",
        "a_b",
        "a__b",
        "a-b",
        "a--b",
        "a-----b",
        "a.b.c/d_e_f/g--h",
        "0/1/2/3",
        "team/app/sub-repo",
        "x" * 255,
        name_of_255_chars(),
        "a" * 127 + "/" + "b" * 127,
    ],
)
def test_valid_repository_names(name: str) -> None:
    assert is_repository_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "A",
        "Library/ubuntu",
        "library/Ubuntu",
        "a/B",
        "ubuntU",
        "a/",
        "/a",
        "/",
        "a//b",
        "a/./b",
        "a/../b",
        "..",
        ".",
        "a..b",
        "a.",
        ".a",
        "-a",
        "a-",
        "_a",
        "a_",
        "a/-b",
        "a-/b",
        "a/_b",
        "a___b",
        "a._b",
        "a_.b",
        "a-.b",
        "a.-b",
        "a_-b",
        "a b",
        " a",
        "a\n",
        "a\tb",
        "x" * 256,
        name_of_255_chars() + "c",
        "a" * 128 + "/" + "b" * 127,
        "a:b",
        "a@b",
        "a%2Fb",
        "a\\b",
        "é",
        "ａ",  # fullwidth a
        "a|b",
        "a{b}",
    ],
)
def test_invalid_repository_names(name: str) -> None:
    assert not is_repository_name(name)


def test_the_length_limit_is_exactly_255() -> None:
    assert MAX_NAME_LENGTH == 255
    assert is_repository_name("a" * 255)
    assert not is_repository_name("a" * 256)
    assert not is_repository_name("a" * 10_000)


@pytest.mark.parametrize(
    "digest",
    [
        SHA256,
        "sha256:" + "0123456789abcdef" * 4,
        "sha512:" + "0" * 128,
        "sha512:" + "0123456789abcdef" * 8,
        "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
        "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
        "blake3:" + "f" * 64,
        "blake3:ABC",  # unregistered algorithms only follow the general grammar
        "a:b",
        "a.b_c-d+e:x",
        "foo:YWJj==",
        "sha256.x:short",
    ],
)
def test_valid_digests(digest: str) -> None:
    assert digest_error(digest) is None
    assert is_digest(digest)


@pytest.mark.parametrize(
    ("digest", "why"),
    [
        ("sha256:" + "A" * 64, "64 lowercase hex"),
        ("sha256:" + "a" * 63 + "B", "64 lowercase hex"),
        ("sha256:" + "a" * 63, "64 lowercase hex"),
        ("sha256:" + "a" * 65, "64 lowercase hex"),
        ("sha256:" + "g" * 64, "64 lowercase hex"),
        ("sha256:" + "a" * 128, "64 lowercase hex"),
        ("sha256:abc", "64 lowercase hex"),
        ("sha512:" + "a" * 64, "128 lowercase hex"),
        ("sha512:" + "a" * 127, "128 lowercase hex"),
        ("sha512:" + "a" * 129, "128 lowercase hex"),
        ("sha512:" + "F" * 128, "128 lowercase hex"),
        ("sha256:", "<algorithm>:<encoded>"),
        ("sha512:", "<algorithm>:<encoded>"),
        ("sha256", "<algorithm>:<encoded>"),
        ("a" * 64, "<algorithm>:<encoded>"),
        ("", "<algorithm>:<encoded>"),
        (":", "<algorithm>:<encoded>"),
        ("latest", "<algorithm>:<encoded>"),
        ("v1.0.0", "<algorithm>:<encoded>"),
        ("1.0-alpine", "<algorithm>:<encoded>"),
        ("SHA256:" + "a" * 64, "<algorithm>:<encoded>"),
        ("Sha256:" + "a" * 64, "<algorithm>:<encoded>"),
        (":abc", "<algorithm>:<encoded>"),
        ("sha256:abc/def", "<algorithm>:<encoded>"),
        ("sha256::" + "a" * 64, "<algorithm>:<encoded>"),
        ("sha256:" + "a" * 64 + ":", "<algorithm>:<encoded>"),
        ("sha256:" + "a" * 64 + "\n", "<algorithm>:<encoded>"),
        (" sha256:" + "a" * 64, "<algorithm>:<encoded>"),
        ("sha256 :" + "a" * 64, "<algorithm>:<encoded>"),
        ("sha256: " + "a" * 64, "<algorithm>:<encoded>"),
        ("+sha256:abc", "<algorithm>:<encoded>"),
        ("sha256+:abc", "<algorithm>:<encoded>"),
        ("sha++256:abc", "<algorithm>:<encoded>"),
        ("sha_256_:abc", "<algorithm>:<encoded>"),
        ("blake3:abc+def", "<algorithm>:<encoded>"),
        ("blake3:abc.def", "<algorithm>:<encoded>"),
        ("blake3:é", "<algorithm>:<encoded>"),
        ("multihash+base58:Qm/Zxt", "<algorithm>:<encoded>"),
    ],
)
def test_invalid_digests_say_why(digest: str, why: str) -> None:
    problem = digest_error(digest)
    assert problem is not None
    assert why in problem
    assert not is_digest(digest)


@given(st.binary(max_size=512), st.sampled_from(["sha256", "sha512"]))
@example(b"", "sha256")
@example(b"", "sha512")
def test_every_computed_digest_is_valid(data: bytes, algorithm: str) -> None:
    digest = compute_digest(data, algorithm)
    assert is_digest(digest)
    algo, _, encoded = digest.partition(":")
    assert algo == algorithm
    assert encoded == hashlib.new(algorithm, data).hexdigest()


@given(st.sampled_from(["sha256", "sha512"]), st.data())
def test_registered_digests_need_exactly_their_hex_length(
    algorithm: str, data: st.DataObject
) -> None:
    length = data.draw(st.integers(min_value=1, max_value=200))
    encoded = data.draw(st.text(alphabet="0123456789abcdef", min_size=length, max_size=length))
    assert is_digest(f"{algorithm}:{encoded}") == (length == SPEC_HEX[algorithm])


_COMPONENT = st.from_regex(SPEC_COMPONENT, fullmatch=True)


@given(st.lists(_COMPONENT, min_size=1, max_size=6))
def test_names_built_from_the_grammar_are_accepted(components: list[str]) -> None:
    name = "/".join(components)
    assert is_repository_name(name) == (len(name) <= 255)


@given(st.text(alphabet="ab09._-/A:", max_size=40))
@example("a/b")
@example("a__b")
@example("a___b")
def test_names_agree_with_the_spec_regex(name: str) -> None:
    expected = len(name) <= 255 and SPEC_NAME.fullmatch(name) is not None
    assert is_repository_name(name) == expected


def _spec_digest_ok(digest: str) -> bool:
    if SPEC_DIGEST.fullmatch(digest) is None:
        return False
    algorithm, _, encoded = digest.partition(":")
    if algorithm in SPEC_HEX:
        return (
            len(encoded) == SPEC_HEX[algorithm] and re.fullmatch("[a-f0-9]+", encoded) is not None
        )
    return True


@given(
    st.one_of(
        st.text(alphabet="sha2561+._-:aAfF=/ ", max_size=30),
        st.builds(
            lambda algorithm, encoded: f"{algorithm}:{encoded}",
            st.sampled_from(["sha256", "sha512", "blake3", "x+y", "a.b"]),
            st.text(alphabet="0123456789abcdefABCDEF=_-+", max_size=130),
        ),
    )
)
def test_digests_agree_with_the_spec_grammar(digest: str) -> None:
    assert is_digest(digest) == _spec_digest_ok(digest)
