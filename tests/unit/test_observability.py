import pytest

from proxy.http.access_log import redact_target


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        ("/v2/", "/v2/"),
        ("/v2/a/tags/list?n=5&last=v1", "/v2/a/tags/list?n=5&last=v1"),
        (
            "/v2/a/blobs/uploads/u?_state=s3cr%2Bt&digest=sha256:ab",
            "/v2/a/blobs/uploads/u?_state=REDACTED&digest=sha256:ab",
        ),
        ("/x?Token=abc&ACCESS_TOKEN=def", "/x?Token=REDACTED&ACCESS_TOKEN=REDACTED"),
        (
            "/b?X-Amz-Signature=1&X-Amz-Credential=2",
            "/b?X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED",
        ),
    ],
)
def test_secret_query_values_never_reach_the_log(target: str, logged: str) -> None:
    assert redact_target(target) == logged
    for secret in ("s3cr", "abc", "def"):
        assert secret not in redact_target(target) or secret in logged
