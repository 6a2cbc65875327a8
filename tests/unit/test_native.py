from __future__ import annotations

import pytest

from proxy.upstream.native import native_from_status, recorded_upstream

INDEX = "application/vnd.oci.image.index.v1+json"
SUBJECT = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("status", "content_type", "native"),
    [
        (200, INDEX, True),
        (200, f"{INDEX}; charset=utf-8", True),
        (200, "application/json", None),  # clients would call it unsupported
        (404, "text/plain", False),
        (401, None, None),
        (403, None, None),
        (500, INDEX, None),
    ],
)
def test_only_an_answer_that_proves_it_settles_the_kind(
    status: int, content_type: str | None, native: bool | None
) -> None:
    assert native_from_status(status, content_type) is native


def test_oci_subject_must_name_the_subject_pushed() -> None:
    assert recorded_upstream({"OCI-Subject": SUBJECT}, SUBJECT)
    assert not recorded_upstream({}, SUBJECT)
    assert not recorded_upstream({"OCI-Subject": "sha256:" + "b" * 64}, SUBJECT)
