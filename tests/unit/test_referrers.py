"""The referrers answer body, its page cursors and its Link header."""

import base64
import hashlib
import re
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.oci.manifest import IMAGE_INDEX, IMAGE_MANIFEST, inspect_manifest
from proxy.oci.referrers import (
    CURSOR_PARAM,
    CursorInvalid,
    decode_cursor,
    encode_cursor,
    next_link,
    render_index,
)

SUBJECT = "sha256:" + hashlib.sha256(b"subject").hexdigest()
LINK = re.compile(r'<(?P<target>[^<>\s"]*)>; rel="next"')


def real_descriptor(n: int, artifact_type: str | None = None) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": IMAGE_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": SUBJECT, "size": 2},
        "layers": [],
        "subject": {"mediaType": IMAGE_MANIFEST, "digest": SUBJECT, "size": 10},
        "annotations": {"n": str(n), "text": 'ünï "quoted" ,]}'},
    }
    if artifact_type:
        document["artifactType"] = artifact_type
    found = inspect_manifest(orjson.dumps(document), IMAGE_MANIFEST)
    assert found is not None
    return found.descriptor


# ---- render_index ----------------------------------------------------------------------------


def test_render_index_is_an_oci_image_index_in_the_given_order() -> None:
    descriptors = [real_descriptor(n, "application/spdx+json") for n in (3, 1, 2)]
    body = render_index(descriptors)
    assert orjson.loads(body) == {
        "schemaVersion": 2,
        "mediaType": IMAGE_INDEX,
        "manifests": [orjson.loads(d) for d in descriptors],
    }
    for descriptor in descriptors:
        assert descriptor in body, "descriptors are spliced byte for byte"


def test_render_index_of_nothing() -> None:
    body = render_index([])
    assert orjson.loads(body) == {"schemaVersion": 2, "mediaType": IMAGE_INDEX, "manifests": []}


def test_render_index_of_one() -> None:
    descriptor = real_descriptor(1)
    assert orjson.loads(render_index([descriptor]))["manifests"] == [orjson.loads(descriptor)]


def test_render_index_accepts_any_iterable_once() -> None:
    descriptors = [real_descriptor(n) for n in range(5)]
    body = render_index(d for d in descriptors)
    assert orjson.loads(body)["manifests"] == [orjson.loads(d) for d in descriptors]


@given(st.lists(st.integers(min_value=0, max_value=50), max_size=30))
def test_render_index_keeps_count_and_order(numbers: list[int]) -> None:
    descriptors = [orjson.dumps({"digest": f"sha256:{n:064x}", "size": n}) for n in numbers]
    document = orjson.loads(render_index(descriptors))
    assert document["schemaVersion"] == 2
    assert document["mediaType"] == IMAGE_INDEX
    assert [m["size"] for m in document["manifests"]] == numbers


# ---- cursors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 1, 9, 10, 99, 100, 2**31, 2**53 + 1, 2**63, 10**100])
def test_cursors_round_trip(position: int) -> None:
    token = encode_cursor(position)
    assert decode_cursor(token) == position


@given(st.integers(min_value=0, max_value=2**256))
def test_cursors_round_trip_property(position: int) -> None:
    token = encode_cursor(position)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token), "safe in a query without escaping"
    assert decode_cursor(token) == position


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=10**12))
def test_distinct_positions_have_distinct_cursors(a: int, b: int) -> None:
    assert (encode_cursor(a) == encode_cursor(b)) == (a == b)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "!!",
        "====",
        "cDEy!",
        "p1",
        "p",
        "12",
        encode_cursor(5)[:-1] + "*",
        encode_cursor(5) + "%",
        encode_cursor(5) + " ",
        " " + encode_cursor(5),
        encode_cursor(12345) + "\n",
        "é" + encode_cursor(5),
        _b64(b"p"),
        _b64(b"q12"),
        _b64(b"P12"),
        _b64(b"12"),
        _b64(b"p-1"),
        _b64(b"p+1"),
        _b64(b"p1.5"),
        _b64(b"p 1"),
        _b64(b"p1 "),
        _b64(b"p1x"),
        _b64(b"p0x10"),
        _b64(b"p1e3"),
        _b64(b"p\xff"),
        _b64(b"\xff\xfe"),
        _b64(b"pp1"),
        "a",  # one base64 character is never a whole byte
    ],
)
def test_garbage_cursors_are_refused(token: str) -> None:
    with pytest.raises(CursorInvalid):
        decode_cursor(token)


@pytest.mark.parametrize("position", [0, 7, 250, 2**40])
def test_tampered_cursors_are_refused(position: int) -> None:
    token = encode_cursor(position)
    tampered = [token[:-1], token + "A", "A" + token, token[1:], token[::-1], token.upper()]
    refused = 0
    for candidate in tampered:
        if candidate == token:
            continue
        try:
            decoded = decode_cursor(candidate)
        except CursorInvalid:
            refused += 1
        else:
            assert decoded != position or candidate == token
    assert refused >= 3


@given(st.text(max_size=40))
@example("cDA")
@example("cA==")
def test_any_token_gives_a_position_or_cursor_invalid(token: str) -> None:
    try:
        position = decode_cursor(token)
    except CursorInvalid:
        return
    assert isinstance(position, int)
    assert position >= 0


# ---- next_link -------------------------------------------------------------------------------


def parse_link(link: str) -> tuple[str, list[tuple[str, str]]]:
    match = LINK.fullmatch(link)
    assert match is not None, f"not an RFC 8288 next link: {link!r}"
    target = urlsplit(match["target"])
    assert (target.scheme, target.netloc, target.fragment) == ("", "", "")
    return target.path, parse_qsl(target.query, keep_blank_values=True, strict_parsing=True)


def test_next_link_keeps_the_filters_and_the_cursor() -> None:
    types = ["application/vnd.example+json", "application/spdx+json"]
    link = next_link("team/app", SUBJECT, types, 42)
    path, query = parse_link(link)
    assert path == f"/v2/team/app/referrers/{SUBJECT}"
    target = link[1 : link.index(">")]
    assert "+" not in target.partition("?")[2], "a literal + would be read as a space"
    assert "vnd.example%2Bjson" in target
    assert [v for k, v in query if k == "artifactType"] == types
    assert [k for k, _ in query] == ["artifactType", "artifactType", CURSOR_PARAM]
    assert decode_cursor(dict(query)[CURSOR_PARAM]) == 42


def test_next_link_without_filters_has_only_the_cursor() -> None:
    path, query = parse_link(next_link("a", SUBJECT, [], 0))
    assert path == f"/v2/a/referrers/{SUBJECT}"
    assert query == [(CURSOR_PARAM, encode_cursor(0))]
    assert decode_cursor(query[0][1]) == 0


@pytest.mark.parametrize(
    "artifact_type",
    [
        "application/vnd.example+json",
        "application/vnd.example+json; version=1",
        "a b",
        "a&next=evil",
        "a=b",
        "a#frag",
        "a>b",
        'a"b',
        "a,b;c",
        "a%2Bb",
        "ünïcödé/typ€",
        "a?b",
    ],
)
def test_next_link_encodes_every_artifact_type(artifact_type: str) -> None:
    link = next_link("team/app", SUBJECT, [artifact_type], 7)
    _, query = parse_link(link)
    assert query == [("artifactType", artifact_type), (CURSOR_PARAM, encode_cursor(7))]


@given(
    st.lists(st.text(min_size=1, max_size=20), max_size=5),
    st.integers(min_value=0, max_value=2**64),
)
def test_next_link_round_trips(types: list[str], position: int) -> None:
    link = next_link("library/ubuntu", SUBJECT, types, position)
    path, query = parse_link(link)
    assert unquote(path) == f"/v2/library/ubuntu/referrers/{SUBJECT}"
    assert [v for k, v in query if k == "artifactType"] == types
    assert [k for k, _ in query][-1] == CURSOR_PARAM
    assert len(query) == len(types) + 1
    assert decode_cursor(query[-1][1]) == position
