import json
import re

import orjson
import pytest

from proxy.oci.manifest import IMAGE_INDEX, IMAGE_MANIFEST
from proxy.oci.tagschema import (
    TagIndexInvalid,
    is_keep_tag,
    is_tag_schema_name,
    keep_tag,
    keep_tag_digest,
    missing_children,
    parse_tag_index,
    tag_name,
    tag_names,
    visible_tags,
)

SUBJECT = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("digest", "tag"),
    [
        ("sha256:" + "a" * 64, "sha256-" + "a" * 64),
        ("sha512:" + "a" * 128, "sha512-" + "a" * 64),
        (
            "test+algorithm+using+algorithm+separators+and+lots+of+characters+to+excercise+overall"
            "+truncation:alsoSome=InTheEncodedSectionToShowHyphenReplacementAndLotsAndLotsOf"
            "CharactersToExcerciseEncodedTruncation",
            "test-algorithm-using-algorithm-s-alsoSome-InTheEncodedSectionToShowHyphenReplacement"
            "AndLotsAndLot",
        ),
    ],
)
def test_tag_names_follow_the_spec_table(digest: str, tag: str) -> None:
    assert tag_name(digest) == tag


def test_the_untruncated_legacy_name_is_read_only_where_it_differs_and_is_a_tag() -> None:
    assert tag_names(SUBJECT) == ["sha256-" + "a" * 64]
    assert tag_names("sha384:" + "b" * 96) == ["sha384-" + "b" * 64, "sha384-" + "b" * 96]
    assert tag_names("sha512:" + "c" * 128) == ["sha512-" + "c" * 64], "135 chars is no tag"


@pytest.mark.parametrize(
    ("tag", "hidden"),
    [
        ("sha256-" + "a" * 64, True),
        ("sha512-" + "f" * 64, True),
        ("sha256-abc", False),
        ("v1-" + "a" * 64, False),
        ("sha256-" + "a" * 64 + ".sig", False),
        ("latest", False),
    ],
)
def test_which_tags_are_tag_schema_names(tag: str, hidden: bool) -> None:
    assert is_tag_schema_name(tag) is hidden


def index(*entries: object, media_type: str = IMAGE_INDEX) -> bytes:
    return orjson.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": list(entries)})


REFERRER = {
    "mediaType": IMAGE_MANIFEST,
    "digest": "sha256:" + "c" * 64,
    "size": 10,
    "artifactType": "application/x",
    "annotations": {"k": "v"},
    "extra": "dropped",
}


def test_a_valid_index_gives_its_referrers() -> None:
    found = parse_tag_index(SUBJECT, index(REFERRER), IMAGE_INDEX, "sha256:" + "d" * 64)
    assert found.digest == "sha256:" + "d" * 64
    (referrer,) = found.referrers
    assert (referrer.subject, referrer.digest, referrer.artifact_type) == (
        SUBJECT,
        REFERRER["digest"],
        "application/x",
    )
    assert orjson.loads(referrer.descriptor) == {k: v for k, v in REFERRER.items() if k != "extra"}


@pytest.mark.parametrize(
    ("body", "content_type", "digest", "why"),
    [
        (index(REFERRER), IMAGE_INDEX, SUBJECT, "subject itself"),
        (index(REFERRER), IMAGE_MANIFEST, "sha256:" + "d" * 64, "not an image index"),
        (b"nope", IMAGE_INDEX, "sha256:" + "d" * 64, "no JSON"),
        (b'{"manifests": 3}', IMAGE_INDEX, "sha256:" + "d" * 64, "no list"),
        (
            index(REFERRER, media_type=IMAGE_MANIFEST),
            IMAGE_INDEX,
            "sha256:" + "d" * 64,
            "mediaType",
        ),
        (index({**REFERRER, "digest": "bad"}), IMAGE_INDEX, "sha256:" + "d" * 64, "digest"),
        (index({**REFERRER, "size": -1}), IMAGE_INDEX, "sha256:" + "d" * 64, "size"),
        (index({**REFERRER, "mediaType": "x/y"}), IMAGE_INDEX, "sha256:" + "d" * 64, "mediaType"),
        (index("text"), IMAGE_INDEX, "sha256:" + "d" * 64, "not an object"),
    ],
)
def test_what_is_not_a_referrers_index(
    body: bytes, content_type: str, digest: str, why: str
) -> None:
    with pytest.raises(TagIndexInvalid, match=why):
        parse_tag_index(SUBJECT, body, content_type, digest)


def test_visible_tags_sorted_filtered_and_paged() -> None:
    tags = ["b", "sha256-" + "a" * 64, "a", "C", "a"]
    assert visible_tags(tags, None, None) == (["C", "a", "b"], False)
    assert visible_tags(tags, None, 2) == (["C", "a"], True)
    assert visible_tags(tags, "a", 1) == (["b"], False)
    assert visible_tags(tags, None, 0) == ([], True)
    assert visible_tags(tags, "z", 5) == ([], False)


GONE = "sha256:" + "b" * 64


def _refusal(*errors: object) -> bytes:
    return orjson.dumps({"errors": list(errors)})


@pytest.mark.parametrize(
    ("body", "missing"),
    [
        # Distribution 2.8's answer, one error per missing child, detail the digest.
        (_refusal({"code": "MANIFEST_BLOB_UNKNOWN", "message": "m", "detail": GONE}), {GONE}),
        (
            _refusal(
                {"code": "MANIFEST_BLOB_UNKNOWN", "detail": GONE},
                {"code": "MANIFEST_BLOB_UNKNOWN", "detail": SUBJECT},
            ),
            {GONE, SUBJECT},
        ),
        (_refusal({"code": "MANIFEST_BLOB_UNKNOWN", "detail": {"digest": GONE}}), {GONE}),
        # Any other reason in the answer: nothing to drop, the refusal stands.
        (
            _refusal(
                {"code": "MANIFEST_BLOB_UNKNOWN", "detail": GONE},
                {"code": "MANIFEST_INVALID", "detail": "bad"},
            ),
            set(),
        ),
        (_refusal({"code": "MANIFEST_BLOB_UNKNOWN", "detail": "sha256:short"}), set()),
        (_refusal({"code": "MANIFEST_BLOB_UNKNOWN"}), set()),
        (_refusal("MANIFEST_BLOB_UNKNOWN"), set()),
        (orjson.dumps({"errors": "MANIFEST_BLOB_UNKNOWN"}), set()),
        (orjson.dumps([GONE]), set()),
        (b"<html>400</html>", set()),
        (b"", set()),
    ],
)
def test_missing_children_only_from_a_blob_unknown_refusal(body: bytes, missing: set[str]) -> None:
    assert missing_children(body) == missing


def test_keep_tags_are_valid_hidden_and_meet_no_other_name() -> None:
    digest = "sha256:" + "ab" * 32
    tag = keep_tag(digest)
    assert tag == "_referrer.sha256-" + "ab" * 32
    assert re.fullmatch(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", tag), "a valid tag"
    assert is_keep_tag(tag)
    assert not is_tag_schema_name(tag)
    for other in (tag_name(digest), tag_name(digest) + ".sig", "latest", "v1.0", "referrer"):
        assert not is_keep_tag(other)
    assert keep_tag_digest(tag) == digest
    long = keep_tag("sha512:" + "c" * 128)
    assert len(long) <= 128
    assert keep_tag_digest(long) is None, "cut: read by tag"
    assert keep_tag_digest("v1") is None
    assert visible_tags([tag, tag_name(digest), "v1"], None, None) == (["v1"], False)


def test_listed_annotations_that_are_no_string_map_or_too_large_are_left_out() -> None:
    """Another registry may hold what Distribution refuses: no 500, no 4 MiB in answers."""
    nested: object = "leaf"
    for _ in range(300):
        nested = {"a": nested}
    subject = "sha256:" + "5" * 64
    entries = [
        {"mediaType": IMAGE_MANIFEST, "digest": "sha256:" + c * 64, "size": 1, "annotations": a}
        for c, a in (
            ("1", {"a": nested}),
            ("2", {"a": 1}),
            ("3", {"x": "y" * 20_000}),
            ("4", {"k": "v"}),
        )
    ]
    body = json.dumps({"schemaVersion": 2, "mediaType": IMAGE_INDEX, "manifests": entries})
    found = parse_tag_index(subject, body.encode(), IMAGE_INDEX, "sha256:" + "9" * 64)
    assert [r.trimmed for r in found.referrers] == [True, True, True, False]
    assert [("annotations" in orjson.loads(r.descriptor)) for r in found.referrers] == [
        False,
        False,
        False,
        True,
    ]
