from multidict import CIMultiDict
from yarl import URL

from proxy.http.headers import client_response_headers, rewrite_url, upstream_request_headers

UPSTREAM = URL("http://registry.internal:5000")
PUBLIC = URL("https://proxy.example.com")


def test_hop_by_hop_and_connection_listed_headers_are_dropped() -> None:
    incoming = CIMultiDict(
        {
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "1",
            "Keep-Alive": "timeout=5",
            "Transfer-Encoding": "chunked",
            "Proxy-Authorization": "Basic eA==",
            "TE": "trailers",
            "Upgrade": "h2c",
            "Host": "proxy.example.com",
            "Expect": "100-continue",
            "Authorization": "Bearer token",
            "Content-Range": "0-9",
        }
    )
    out = upstream_request_headers(incoming, client_ip="10.1.2.3", scheme="https", host="p:1")
    assert set(out) == {
        "Authorization",
        "Content-Range",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
    }
    assert out["Authorization"] == "Bearer token"
    assert (out["X-Forwarded-Proto"], out["X-Forwarded-Host"]) == ("https", "p:1")


def test_forwarded_for_is_appended_to() -> None:
    incoming = CIMultiDict({"X-Forwarded-For": "192.0.2.1"})
    out = upstream_request_headers(incoming, client_ip="10.1.2.3", scheme="http", host="h")
    assert out["X-Forwarded-For"] == "192.0.2.1, 10.1.2.3"


def test_location_on_the_upstream_moves_to_the_proxy_keeping_encoding() -> None:
    location = "http://registry.internal:5000/v2/a/b/blobs/uploads/u?_state=a%2Bb%3D&x=1"
    assert rewrite_url(location, UPSTREAM, PUBLIC) == (
        "https://proxy.example.com/v2/a/b/blobs/uploads/u?_state=a%2Bb%3D&x=1"
    )


def test_other_hosts_and_relative_urls_are_kept() -> None:
    for value in (
        "https://s3.example.com/bucket/blob?X-Amz-Signature=abc",
        "http://registry.internal:5001/v2/x",
        "/v2/a/blobs/uploads/u?_state=x",
    ):
        assert rewrite_url(value, UPSTREAM, PUBLIC) == value


def test_response_headers_rewrite_location_and_every_link() -> None:
    upstream = CIMultiDict(
        [
            ("Location", "http://registry.internal:5000/v2/r/manifests/sha256:ab"),
            ("Link", '<http://registry.internal:5000/v2/_catalog?last=b&n=1>; rel="next"'),
            ("Link", '</v2/_catalog?last=c>; rel="next"'),
            ("Transfer-Encoding", "chunked"),
            ("Docker-Content-Digest", "sha256:ab"),
            ("WWW-Authenticate", 'Bearer realm="https://auth.example.com/token"'),
        ]
    )
    out = client_response_headers(upstream, upstream=UPSTREAM, public=PUBLIC)
    assert out["Location"] == "https://proxy.example.com/v2/r/manifests/sha256:ab"
    assert out.getall("Link") == [
        '<https://proxy.example.com/v2/_catalog?last=b&n=1>; rel="next"',
        '</v2/_catalog?last=c>; rel="next"',
    ]
    assert "Transfer-Encoding" not in out
    assert out["WWW-Authenticate"] == 'Bearer realm="https://auth.example.com/token"'
    assert out["Docker-Content-Digest"] == "sha256:ab"
