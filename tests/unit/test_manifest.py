"""inspect_manifest: which pushed manifests are referrers, and the descriptor kept for each."""

import hashlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.oci.manifest import (
    IMAGE_INDEX,
    IMAGE_MANIFEST,
    MAX_ANNOTATION_BYTES,
    ManifestInvalid,
    Referrer,
    compute_digest,
    digest_algorithm,
    inspect_manifest,
)
from proxy.oci.names import is_digest

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SUBJECT_DIGEST = "sha256:" + hashlib.sha256(b"the subject image").hexdigest()
SUBJECT = {"mediaType": IMAGE_MANIFEST, "digest": SUBJECT_DIGEST, "size": 123}
CONFIG = {
    "mediaType": "application/vnd.oci.empty.v1+json",
    "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    "size": 2,
}
SBOM = "application/spdx+json"


def manifest(**fields: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": IMAGE_MANIFEST,
        "config": CONFIG,
        "layers": [],
        "subject": SUBJECT,
        **fields,
    }


def index(**fields: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": IMAGE_INDEX,
        "manifests": [],
        "subject": SUBJECT,
        **fields,
    }


def inspected(
    body: bytes, content_type: str = IMAGE_MANIFEST, algorithm: str = "sha256"
) -> Referrer:
    found = inspect_manifest(body, content_type, algorithm)
    assert found is not None
    return found


def descriptor_of(body: bytes, content_type: str = IMAGE_MANIFEST) -> dict[str, Any]:
    return dict(orjson.loads(inspected(body, content_type).descriptor))


# ---- artifactType ----------------------------------------------------------------------------


def test_a_manifest_with_artifact_type_and_annotations() -> None:
    body = orjson.dumps(manifest(artifactType=SBOM, annotations={"a": "1"}))
    found = inspected(body)
    assert found.subject == SUBJECT_DIGEST
    assert found.digest == "sha256:" + hashlib.sha256(body).hexdigest()
    assert found.artifact_type == SBOM
    assert orjson.loads(found.descriptor) == {
        "mediaType": IMAGE_MANIFEST,
        "digest": found.digest,
        "size": len(body),
        "artifactType": SBOM,
        "annotations": {"a": "1"},
    }


def test_artifact_type_wins_over_the_config_media_type() -> None:
    body = orjson.dumps(manifest(artifactType=SBOM, config={**CONFIG, "mediaType": "x/config"}))
    assert descriptor_of(body)["artifactType"] == SBOM
    assert inspected(body).artifact_type == SBOM


@pytest.mark.parametrize(
    "extra",
    [{}, {"artifactType": ""}, {"artifactType": None}],
    ids=["absent", "empty", "null"],
)
def test_without_artifact_type_a_manifest_takes_its_config_media_type(
    extra: dict[str, Any],
) -> None:
    config = {**CONFIG, "mediaType": "application/vnd.example.config.v1+json"}
    body = orjson.dumps(manifest(config=config, **extra))
    found = inspected(body)
    assert found.artifact_type == "application/vnd.example.config.v1+json"
    assert orjson.loads(found.descriptor) == {
        "mediaType": IMAGE_MANIFEST,
        "digest": compute_digest(body),
        "size": len(body),
        "artifactType": "application/vnd.example.config.v1+json",
    }


def test_a_manifest_without_any_type_has_no_artifact_type() -> None:
    document = manifest()
    del document["config"]
    found = inspected(orjson.dumps(document))
    assert found.artifact_type is None
    assert "artifactType" not in orjson.loads(found.descriptor)


def test_an_index_without_artifact_type_has_none() -> None:
    body = orjson.dumps(index())
    found = inspected(body, IMAGE_INDEX)
    assert found.artifact_type is None
    assert orjson.loads(found.descriptor) == {
        "mediaType": IMAGE_INDEX,
        "digest": compute_digest(body),
        "size": len(body),
    }


def test_an_index_never_falls_back_to_a_config() -> None:
    body = orjson.dumps(index(config=CONFIG))
    assert inspected(body, IMAGE_INDEX).artifact_type is None


def test_an_index_with_artifact_type_keeps_it() -> None:
    body = orjson.dumps(index(artifactType="application/vnd.example.bundle"))
    found = inspected(body, IMAGE_INDEX)
    assert found.artifact_type == "application/vnd.example.bundle"
    assert descriptor_of(body, IMAGE_INDEX)["artifactType"] == "application/vnd.example.bundle"


# ---- annotations -----------------------------------------------------------------------------


def test_annotations_are_copied_exactly_in_order() -> None:
    annotations = {
        "org.opencontainers.image.created": "2024-01-02T03:04:05Z",
        "z-last-key-first": "ünïcödé ✓",
        "a": "",
        'quote"and\\backslash': "line\nbreak",
    }
    body = orjson.dumps(manifest(artifactType=SBOM, annotations=annotations))
    copied = descriptor_of(body)["annotations"]
    assert copied == annotations
    assert list(copied) == list(annotations)


@pytest.mark.parametrize("annotations", [{}, None], ids=["empty", "null"])
def test_absent_annotations_are_left_out(annotations: Any) -> None:
    body = orjson.dumps(manifest(annotations=annotations))
    assert "annotations" not in descriptor_of(body)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "annotations",
    ["x", ["a"], {"a": 1}, {"a": None}, {"a": ["b"]}, nested(300)],
    ids=["str", "list", "number", "null value", "list value", "nested 300 deep"],
)
def test_annotations_that_are_no_string_map_are_refused(annotations: Any) -> None:
    """Image-spec: a map of strings to strings. 300 levels of nesting used to make the
    serializer raise (a 500)."""
    body = json.dumps(manifest(annotations=annotations)).encode()
    with pytest.raises(ManifestInvalid, match="annotations"):
        inspect_manifest(body, IMAGE_MANIFEST)


def test_annotations_over_the_bound_are_left_out_and_the_referrer_kept() -> None:
    small = {"note": "x" * 100}
    large = {"note": "x" * MAX_ANNOTATION_BYTES}
    kept = inspect_manifest(orjson.dumps(manifest(annotations=small)), IMAGE_MANIFEST)
    assert kept is not None
    assert not kept.trimmed
    assert orjson.loads(kept.descriptor)["annotations"] == small
    cut = inspect_manifest(orjson.dumps(manifest(annotations=large)), IMAGE_MANIFEST)
    assert cut is not None
    assert cut.trimmed
    assert "annotations" not in orjson.loads(cut.descriptor)
    looser = inspect_manifest(
        orjson.dumps(manifest(annotations=large)), IMAGE_MANIFEST, max_annotation_bytes=10**6
    )
    assert looser is not None
    assert not looser.trimmed


def test_an_artifact_type_longer_than_a_media_type_is_refused() -> None:
    body = orjson.dumps(manifest(artifactType="application/" + "x" * 300))
    with pytest.raises(ManifestInvalid, match="artifactType"):
        inspect_manifest(body, IMAGE_MANIFEST)


def test_nothing_else_of_the_manifest_leaks_into_the_descriptor() -> None:
    body = orjson.dumps(manifest(artifactType=SBOM, layers=[CONFIG], extra={"x": 1}))
    assert set(descriptor_of(body)) == {"mediaType", "digest", "size", "artifactType"}


# ---- mediaType: Content-Type or the body's field -----------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "",
        "application/json",
        "application/octet-stream",
        "application/json; charset=utf-8",
        "application/octet-stream;foo=bar",
        "Application/JSON",
        "  application/json  ",
    ],
)
@pytest.mark.parametrize("document", [index(), manifest()], ids=["index", "manifest"])
def test_generic_content_types_defer_to_the_media_type_field(
    content_type: str, document: dict[str, Any]
) -> None:
    assert descriptor_of(orjson.dumps(document), content_type)["mediaType"] == document["mediaType"]


@pytest.mark.parametrize("content_type", ["", "application/json", "application/octet-stream"])
@pytest.mark.parametrize("media_type", [None, 5, "", DOCKER_MANIFEST, "text/plain"])
def test_generic_content_type_and_no_oci_media_type_field(
    content_type: str, media_type: Any
) -> None:
    document = manifest(mediaType=media_type)
    assert inspect_manifest(orjson.dumps(document), content_type) is None
    del document["mediaType"]
    assert inspect_manifest(orjson.dumps(document), content_type) is None


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (IMAGE_MANIFEST, IMAGE_MANIFEST),
        (IMAGE_MANIFEST + "; charset=utf-8", IMAGE_MANIFEST),
        (IMAGE_MANIFEST + ";charset=utf-8", IMAGE_MANIFEST),
        (IMAGE_INDEX, IMAGE_INDEX),
        (IMAGE_INDEX + "; a=b; c=d", IMAGE_INDEX),
        ("APPLICATION/VND.OCI.IMAGE.INDEX.V1+JSON", IMAGE_INDEX),
    ],
)
def test_a_specific_content_type_decides_the_media_type(content_type: str, expected: str) -> None:
    # The body claims the other type: the Content-Type the registry stores it under wins.
    other = IMAGE_INDEX if expected == IMAGE_MANIFEST else IMAGE_MANIFEST
    body = orjson.dumps(manifest(mediaType=other, artifactType=SBOM))
    assert descriptor_of(body, content_type)["mediaType"] == expected


# ---- what is not inspected -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (orjson.dumps(manifest()), DOCKER_MANIFEST),
        (orjson.dumps(manifest()), DOCKER_LIST),
        (orjson.dumps(manifest(mediaType=DOCKER_MANIFEST)), ""),
        (orjson.dumps(manifest(mediaType=DOCKER_MANIFEST)), "application/json"),
        (orjson.dumps(manifest()), "text/plain"),
        (orjson.dumps(manifest()), "application/vnd.oci.image.config.v1+json"),
        (b"{not json", IMAGE_MANIFEST),
        (b"", IMAGE_MANIFEST),
        (b"\xff\xfe\x00", IMAGE_MANIFEST),
        (b"[1, 2]", IMAGE_MANIFEST),
        (b"[" + orjson.dumps(manifest()) + b"]", IMAGE_MANIFEST),
        (b"null", IMAGE_MANIFEST),
        (b'"subject"', IMAGE_MANIFEST),
        (b"42", IMAGE_MANIFEST),
        (orjson.dumps(manifest()) + b"trailing", IMAGE_MANIFEST),
        (orjson.dumps({k: v for k, v in manifest().items() if k != "subject"}), IMAGE_MANIFEST),
        (orjson.dumps({k: v for k, v in index().items() if k != "subject"}), IMAGE_INDEX),
    ],
    ids=[
        "docker-v2",
        "docker-list",
        "docker-v2-field",
        "docker-v2-field-json",
        "text-plain",
        "config-type",
        "not-json",
        "empty",
        "not-utf8",
        "array",
        "array-of-manifest",
        "null",
        "string",
        "number",
        "trailing-garbage",
        "no-subject",
        "index-no-subject",
    ],
)
def test_what_is_not_inspected(body: bytes, content_type: str) -> None:
    assert inspect_manifest(body, content_type) is None


def test_a_docker_manifest_with_a_bad_subject_is_not_judged() -> None:
    body = orjson.dumps(manifest(subject="nonsense"))
    assert inspect_manifest(body, DOCKER_MANIFEST) is None


# ---- digest and size -------------------------------------------------------------------------


def test_the_digest_is_of_the_exact_bytes() -> None:
    compact = orjson.dumps(manifest())
    spaced = orjson.dumps(manifest(), option=orjson.OPT_INDENT_2)
    reordered = orjson.dumps(dict(reversed(list(manifest().items()))))
    assert orjson.loads(compact) == orjson.loads(spaced) == orjson.loads(reordered)
    found = [inspected(body) for body in (compact, spaced, reordered)]
    assert len({f.digest for f in found}) == 3
    for body, referrer in zip((compact, spaced, reordered), found, strict=True):
        described = orjson.loads(referrer.descriptor)
        assert referrer.digest == described["digest"]
        assert described["digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
        assert described["size"] == len(body)


def test_size_counts_bytes_not_characters() -> None:
    body = orjson.dumps(manifest(annotations={"note": "ß" * 10}))
    assert len(body) > len(body.decode())
    assert descriptor_of(body)["size"] == len(body)


def test_whitespace_around_the_document_counts() -> None:
    body = b"\n  " + orjson.dumps(manifest()) + b"  \n"
    described = descriptor_of(body)
    assert described["size"] == len(body)
    assert described["digest"] == compute_digest(body)


def test_sha512_when_the_client_pushed_by_a_sha512_digest() -> None:
    body = orjson.dumps(manifest())
    found = inspected(body, IMAGE_MANIFEST, "sha512")
    assert found.digest == "sha512:" + hashlib.sha512(body).hexdigest()
    assert is_digest(found.digest)
    described = orjson.loads(found.descriptor)
    assert described["digest"] == found.digest
    assert described["size"] == len(body)
    assert found.subject == SUBJECT_DIGEST


@pytest.mark.parametrize(
    ("reference", "algorithm"),
    [
        ("sha512:" + "a" * 128, "sha512"),
        ("sha256:" + "a" * 64, "sha256"),
        ("latest", "sha256"),
        ("v1.2.3", "sha256"),
        ("md5:abc", "sha256"),
        ("blake3:" + "a" * 64, "sha256"),
        ("", "sha256"),
        ("sha512", "sha256"),
    ],
)
def test_digest_algorithm(reference: str, algorithm: str) -> None:
    assert digest_algorithm(reference) == algorithm


def test_sha384_is_handled_like_the_other_registered_algorithms() -> None:
    assert digest_algorithm("sha384:" + "a" * 96) == "sha384"
    body = orjson.dumps(manifest())
    assert inspected(body, IMAGE_MANIFEST, "sha384").digest == (
        "sha384:" + hashlib.sha384(body).hexdigest()
    )


def test_compute_digest() -> None:
    assert compute_digest(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert compute_digest(b"{}") == CONFIG["digest"]
    assert compute_digest(b"", "sha512") == "sha512:" + hashlib.sha512(b"").hexdigest()


# ---- the subject ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "digest",
    [
        "sha512:" + "c" * 128,
        "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
    ],
)
def test_any_valid_subject_digest_is_kept(digest: str) -> None:
    found = inspected(orjson.dumps(manifest(subject={**SUBJECT, "digest": digest})))
    assert found.subject == digest


@pytest.mark.parametrize("size", [0, 1, 2**53, 2**63 - 1])
def test_any_non_negative_integer_size_is_fine(size: int) -> None:
    assert inspected(orjson.dumps(manifest(subject={**SUBJECT, "size": size}))).subject == (
        SUBJECT_DIGEST
    )


def test_extra_subject_fields_are_fine() -> None:
    subject = {**SUBJECT, "annotations": {"x": "y"}, "artifactType": "a/b", "urls": []}
    assert inspected(orjson.dumps(manifest(subject=subject))).subject == SUBJECT_DIGEST


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        (SUBJECT_DIGEST, "descriptor object"),
        (None, "descriptor object"),
        ([SUBJECT], "descriptor object"),
        (1, "descriptor object"),
        ({**SUBJECT, "mediaType": 1}, "mediaType"),
        ({**SUBJECT, "mediaType": None}, "mediaType"),
        ({**SUBJECT, "mediaType": [IMAGE_MANIFEST]}, "mediaType"),
        ({k: v for k, v in SUBJECT.items() if k != "mediaType"}, "mediaType"),
        ({**SUBJECT, "digest": "sha256:xyz"}, "digest is invalid"),
        ({**SUBJECT, "digest": "sha256:" + "B" * 64}, "digest is invalid"),
        ({**SUBJECT, "digest": "sha256:"}, "digest is invalid"),
        ({**SUBJECT, "digest": "latest"}, "digest is invalid"),
        ({**SUBJECT, "digest": ""}, "digest is invalid"),
        ({**SUBJECT, "digest": 5}, "digest must be a string"),
        ({**SUBJECT, "digest": None}, "digest must be a string"),
        ({k: v for k, v in SUBJECT.items() if k != "digest"}, "digest must be a string"),
        ({**SUBJECT, "size": -1}, "size"),
        ({**SUBJECT, "size": 1.5}, "size"),
        ({**SUBJECT, "size": 1.0}, "size"),
        ({**SUBJECT, "size": True}, "size"),
        ({**SUBJECT, "size": False}, "size"),
        ({**SUBJECT, "size": "123"}, "size"),
        ({**SUBJECT, "size": None}, "size"),
        ({k: v for k, v in SUBJECT.items() if k != "size"}, "size"),
        ({}, "mediaType"),
    ],
)
@pytest.mark.parametrize("content_type", [IMAGE_MANIFEST, "application/json"])
def test_invalid_subjects_are_refused(subject: Any, message: str, content_type: str) -> None:
    with pytest.raises(ManifestInvalid, match=message):
        inspect_manifest(orjson.dumps(manifest(subject=subject)), content_type)


def test_an_invalid_subject_in_an_index_is_refused() -> None:
    with pytest.raises(ManifestInvalid):
        inspect_manifest(orjson.dumps(index(subject={**SUBJECT, "size": -5})), IMAGE_INDEX)


# ---- properties ------------------------------------------------------------------------------


@given(
    st.binary(max_size=300),
    st.sampled_from([IMAGE_MANIFEST, IMAGE_INDEX, "", "application/json", DOCKER_MANIFEST]),
)
@example(b'{"subject": 1}', IMAGE_MANIFEST)
@example(b'{"subject": {}}', "")
def test_arbitrary_bytes_only_ever_raise_manifest_invalid(body: bytes, content_type: str) -> None:
    try:
        found = inspect_manifest(body, content_type)
    except ManifestInvalid:
        return
    if found is not None:
        assert found.digest == compute_digest(body)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_SUBJECTS = _JSON | st.fixed_dictionaries(
    {},
    optional={
        "mediaType": st.sampled_from([IMAGE_MANIFEST, IMAGE_INDEX, ""]) | _JSON,
        "digest": st.sampled_from([SUBJECT_DIGEST, "sha256:abc", "x:y", "sha512:" + "0" * 128])
        | _JSON,
        "size": st.integers(min_value=-5, max_value=2**63 - 1) | _JSON,
    },
)


@given(_SUBJECTS, st.sampled_from([IMAGE_MANIFEST, IMAGE_INDEX, ""]))
def test_any_subject_value_is_refused_or_gives_a_valid_record(
    subject: Any, content_type: str
) -> None:
    body = orjson.dumps(manifest(subject=subject))
    try:
        found = inspect_manifest(body, content_type)
    except ManifestInvalid:
        return
    assert found is not None
    assert isinstance(subject, dict)
    assert found.subject == subject["digest"]
    assert is_digest(found.subject)
    assert isinstance(subject["mediaType"], str)
    size = subject["size"]
    assert type(size) is int
    assert size >= 0
    assert found.digest == compute_digest(body)


_ANNOTATIONS = st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=5)


@given(
    st.sampled_from([IMAGE_MANIFEST, IMAGE_INDEX]),
    st.none() | st.text(min_size=1, max_size=30),
    _ANNOTATIONS,
    st.sampled_from(["sha256", "sha512"]),
    st.booleans(),
)
def test_the_descriptor_describes_the_pushed_bytes(
    media_type: str,
    artifact_type: str | None,
    annotations: dict[str, str],
    algorithm: str,
    indent: bool,
) -> None:
    document = manifest(mediaType=media_type, annotations=annotations)
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    body = orjson.dumps(document, option=orjson.OPT_INDENT_2 if indent else 0)
    found = inspected(body, media_type, algorithm)
    expected_type = artifact_type
    if expected_type is None and media_type == IMAGE_MANIFEST:
        expected_type = CONFIG["mediaType"]
    expected: dict[str, Any] = {
        "mediaType": media_type,
        "digest": f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}",
        "size": len(body),
    }
    if expected_type is not None:
        expected["artifactType"] = expected_type
    if annotations:
        expected["annotations"] = annotations
    assert orjson.loads(found.descriptor) == expected
    assert found == Referrer(SUBJECT_DIGEST, expected["digest"], expected_type, found.descriptor)
