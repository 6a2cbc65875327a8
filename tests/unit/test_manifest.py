import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.manifest import (
    IMAGE_INDEX,
    IMAGE_MANIFEST,
    ManifestInvalid,
    compute_digest,
    digest_algorithm,
    inspect_manifest,
)

SUBJECT = {"mediaType": IMAGE_MANIFEST, "digest": "sha256:" + "b" * 64, "size": 123}
CONFIG = {
    "mediaType": "application/vnd.oci.empty.v1+json",
    "digest": "sha256:" + "4" * 64,
    "size": 2,
}


def manifest(**fields: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": IMAGE_MANIFEST,
        "config": CONFIG,
        "layers": [],
        "subject": SUBJECT,
        **fields,
    }


def descriptor_of(body: bytes, content_type: str = IMAGE_MANIFEST) -> dict[str, Any]:
    found = inspect_manifest(body, content_type)
    assert found is not None
    return dict(orjson.loads(found.descriptor))


def test_artifact_type_from_the_manifest_and_annotations_copied() -> None:
    body = orjson.dumps(manifest(artifactType="application/spdx+json", annotations={"a": "1"}))
    found = inspect_manifest(body, IMAGE_MANIFEST)
    assert found is not None
    assert found.subject == SUBJECT["digest"]
    assert found.digest == compute_digest(body)
    assert found.artifact_type == "application/spdx+json"
    assert orjson.loads(found.descriptor) == {
        "mediaType": IMAGE_MANIFEST,
        "digest": compute_digest(body),
        "size": len(body),
        "artifactType": "application/spdx+json",
        "annotations": {"a": "1"},
    }


def test_artifact_type_falls_back_to_the_config_media_type() -> None:
    body = orjson.dumps(manifest())
    assert descriptor_of(body)["artifactType"] == CONFIG["mediaType"]
    assert (
        descriptor_of(orjson.dumps(manifest(artifactType="")))["artifactType"]
        == (CONFIG["mediaType"])
    )


def test_an_index_without_artifact_type_has_none() -> None:
    body = orjson.dumps(
        {"schemaVersion": 2, "mediaType": IMAGE_INDEX, "manifests": [], "subject": SUBJECT}
    )
    described = descriptor_of(body, IMAGE_INDEX)
    assert "artifactType" not in described
    assert described["mediaType"] == IMAGE_INDEX


@pytest.mark.parametrize(
    "content_type",
    ["", "application/json", "application/octet-stream", "application/json; charset=utf-8"],
)
def test_generic_content_types_defer_to_the_media_type_field(content_type: str) -> None:
    body = orjson.dumps(
        {"schemaVersion": 2, "mediaType": IMAGE_INDEX, "manifests": [], "subject": SUBJECT}
    )
    assert descriptor_of(body, content_type)["mediaType"] == IMAGE_INDEX


def test_parameters_on_the_content_type_are_ignored() -> None:
    body = orjson.dumps(manifest())
    assert descriptor_of(body, IMAGE_MANIFEST + "; charset=utf-8")["mediaType"] == IMAGE_MANIFEST


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (orjson.dumps(manifest()), "application/vnd.docker.distribution.manifest.v2+json"),
        (b"{not json", IMAGE_MANIFEST),
        (b"[1, 2]", IMAGE_MANIFEST),
        (orjson.dumps({**manifest(), "subject": SUBJECT} | {"mediaType": "x/y"}), ""),
        (orjson.dumps({k: v for k, v in manifest().items() if k != "subject"}), IMAGE_MANIFEST),
    ],
    ids=["docker-v2", "not-json", "array", "unknown-media-type", "no-subject"],
)
def test_what_is_not_inspected(body: bytes, content_type: str) -> None:
    assert inspect_manifest(body, content_type) is None


def test_the_digest_is_of_the_exact_bytes() -> None:
    compact = orjson.dumps(manifest())
    spaced = orjson.dumps(manifest(), option=orjson.OPT_INDENT_2)
    first, second = descriptor_of(compact), descriptor_of(spaced)
    assert first["digest"] != second["digest"]
    assert (first["size"], second["size"]) == (len(compact), len(spaced))
    assert second["digest"] == compute_digest(spaced)


def test_sha512_when_the_client_pushed_by_a_sha512_digest() -> None:
    body = orjson.dumps(manifest())
    found = inspect_manifest(body, IMAGE_MANIFEST, digest_algorithm("sha512:" + "a" * 128))
    assert found is not None
    assert found.digest == compute_digest(body, "sha512")
    assert digest_algorithm("latest") == digest_algorithm("md5:abc") == "sha256"


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        ("sha256:" + "b" * 64, "descriptor object"),
        ({**SUBJECT, "mediaType": 1}, "mediaType"),
        ({k: v for k, v in SUBJECT.items() if k != "mediaType"}, "mediaType"),
        ({**SUBJECT, "digest": "sha256:xyz"}, "digest is invalid"),
        ({**SUBJECT, "digest": 5}, "digest must be a string"),
        ({**SUBJECT, "size": -1}, "size"),
        ({**SUBJECT, "size": 1.5}, "size"),
        ({**SUBJECT, "size": True}, "size"),
        ({k: v for k, v in SUBJECT.items() if k != "size"}, "size"),
        (None, "descriptor object"),
    ],
)
def test_invalid_subjects_are_refused(subject: Any, message: str) -> None:
    with pytest.raises(ManifestInvalid, match=message):
        inspect_manifest(orjson.dumps(manifest(subject=subject)), IMAGE_MANIFEST)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(body: bytes) -> None:
    with contextlib.suppress(ManifestInvalid):
        inspect_manifest(body, IMAGE_MANIFEST)


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


@given(_JSON)
def test_any_subject_value_is_refused_or_gives_a_valid_record(subject: Any) -> None:
    try:
        found = inspect_manifest(orjson.dumps(manifest(subject=subject)), IMAGE_MANIFEST)
    except ManifestInvalid:
        return
    assert found is not None
    assert found.subject == subject["digest"]
