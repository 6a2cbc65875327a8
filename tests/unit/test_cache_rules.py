import pytest
from multidict import CIMultiDict

from proxy.oci.cache_rules import MAX_ENTRY_BYTES, accepts, answerable, keepable, kept_headers

OCI = "application/vnd.oci.image.manifest.v1+json"
DOCKER = "application/vnd.docker.distribution.manifest.v2+json"


@pytest.mark.parametrize(
    ("method", "query", "headers", "expected"),
    [
        ("GET", "", {}, True),
        ("HEAD", "", {"Accept": OCI}, True),
        ("PUT", "", {}, False),
        ("DELETE", "", {}, False),
        ("GET", "x=1", {}, False),
        ("GET", "", {"If-None-Match": '"sha256:ab"'}, False),
        ("GET", "", {"if-modified-since": "Mon, 01 Jan 2024 00:00:00 GMT"}, False),
        ("GET", "", {"Range": "bytes=0-1"}, False),
        ("GET", "", {"If-Match": "*"}, False),
    ],
)
def test_answerable(method: str, query: str, headers: dict[str, str], expected: bool) -> None:
    assert answerable(method, query, CIMultiDict(headers)) is expected


def test_keepable_only_bounded_complete_200s() -> None:
    typed = CIMultiDict({"Content-Type": OCI})
    assert keepable(200, typed, 100)
    assert keepable(200, typed, MAX_ENTRY_BYTES)
    assert not keepable(200, typed, MAX_ENTRY_BYTES + 1)
    assert not keepable(200, typed, None)  # chunked: size unknown
    for status in (201, 203, 206, 301, 304, 401, 403, 404, 429, 500, 503):
        assert not keepable(status, typed, 100), status
    assert not keepable(200, CIMultiDict(), 100)  # no Content-Type to match an Accept against
    assert not keepable(200, CIMultiDict({"Content-Type": OCI, "Set-Cookie": "s=1"}), 100)
    for directive in ("no-store", "private", "Private, max-age=0"):
        headers = CIMultiDict({"Content-Type": OCI, "Cache-Control": directive})
        assert not keepable(200, headers, 100), directive
    assert keepable(200, CIMultiDict({"Content-Type": OCI, "Cache-Control": "max-age=60"}), 1)


def test_kept_headers_drop_only_date() -> None:
    headers = [
        ("Content-Type", OCI),
        ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ("Docker-Content-Digest", "sha256:ab"),
        ("Etag", '"sha256:ab"'),
        ("Content-Length", "3"),
    ]
    assert kept_headers(headers) == [h for h in headers if h[0] != "Date"]


@pytest.mark.parametrize(
    ("accept", "content_type", "expected"),
    [
        ([OCI], OCI, True),
        ([f"{DOCKER}, {OCI}"], OCI, True),
        ([DOCKER, OCI], OCI, True),  # several Accept headers
        ([f"{OCI}; q=0.5"], f"{OCI}; charset=utf-8", True),
        ([f" {OCI.upper()} "], OCI, True),
        ([DOCKER], OCI, False),  # Distribution answers 404 here
        (["*/*"], OCI, False),
        (["application/*"], OCI, False),
        ([], OCI, False),
        ([OCI], "", False),
    ],
)
def test_accepts(accept: list[str], content_type: str, expected: bool) -> None:
    assert accepts(accept, content_type) is expected
