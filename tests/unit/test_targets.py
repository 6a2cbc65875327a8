import itertools

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from proxy.oci.errors import OCIError
from proxy.oci.targets import (
    MAX_TARGET,
    ROUTE_CLASSES,
    Target,
    checked_path,
    checked_target,
    classify,
    upstream_url,
)


def target_problem(raw_target: str) -> OCIError | None:
    try:
        checked_target(raw_target)
    except OCIError as problem:
        return problem
    return None


def path_problem(raw_path: str) -> OCIError | None:
    try:
        checked_path(raw_path)
    except OCIError as problem:
        return problem
    return None


SHA = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "path",
    [
        "/v2/",
        "/v2/_catalog",
        "/v2/a/b/tags/list",
        f"/v2/a/blobs/{SHA}",
        "/v2/a/blobs/uploads/",
        "/v2/a/blobs/uploads/0f3c-uuid",
        "/v2/a/manifests/v1.0_rc-1",
        f"/v2/a/manifests/{SHA}",
        f"/v2/a/referrers/{SHA}",
        "/v2/a/something/else",
        "/healthz",
    ],
)
def test_good_and_unknown_paths_pass(path: str) -> None:
    assert path_problem(path) is None


def test_a_long_target_is_414() -> None:
    error = target_problem("/v2/?" + "x" * MAX_TARGET)
    assert error is not None
    assert error.status == 414


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=80))
def test_any_path_gets_none_or_a_400(tail: str) -> None:
    for kind in ("blobs/", "manifests/", "referrers/", ""):
        error = path_problem(f"/v2/{tail}/{kind}{tail}")
        assert error is None or (error.status == 400 and error.code.isupper())


@pytest.mark.parametrize(
    "target",
    [
        "pany://x/v2/a/manifests/v1",
        "http://evil.example:1/v2/a/referrers/" + SHA,
        "//evil.example/v2/",
        "evil.example:443",
        "*",
        "/v2/a/referrers/" + SHA + "#frag",
    ],
)
def test_only_origin_form_targets_are_served(target: str) -> None:
    error = target_problem(target)
    assert error is not None
    assert (error.status, error.code) == (400, "UNSUPPORTED")


@pytest.mark.parametrize(
    "path",
    [
        "/v2/a/referr%65rs/-x",
        "/%762/a/referrers/" + SHA,
        "/v2/a/referrers/sha256%3A" + "a" * 64,
        "/v2/a%2Fb/tags/list",
        "/v2/a/./referrers/" + SHA,
        "/v2/a/b/../referrers/" + SHA,
        "/x/../v2/a/referrers/" + SHA,
        "/healthz%20",
    ],
)
def test_the_path_validated_is_the_path_routed(path: str) -> None:
    """aiohttp decodes `%XX` and yarl drops dot segments before routing: such paths are
    refused, so nothing is validated as one string and routed as another."""
    error = target_problem(path)
    assert error is not None
    assert error.status == 400


def test_the_upstream_url_keeps_the_configured_origin() -> None:
    """Concatenating `f"{upstream}{raw_path}"` sent `pany://x/...` to registry.acme.company."""
    origin = URL("https://registry.acme.com")
    assert str(upstream_url(origin, "/v2/a/manifests/v1?x=%2B")) == (
        "https://registry.acme.com/v2/a/manifests/v1?x=%2B"
    )
    for hostile in ("pany://x/v2/", "//registry.acme.company/v2/", "@evil/v2/", "http://x/v2/"):
        with pytest.raises(ValueError, match="origin-form"):
            upstream_url(origin, hostile)


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=80))
def test_any_accepted_target_goes_to_the_configured_origin(tail: str) -> None:
    origin = URL("http://[::1]:5000")
    for target in (f"/{tail}", f"/v2/{tail}", tail):
        if target_problem(target) is None:
            url = upstream_url(origin, target)
            assert (url.scheme, url.host, url.port) == ("http", "::1", 5000)
            path, _, query = target.partition("?")
            assert (url.raw_path, url.raw_query_string) == (path, query)


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v2/", "base"),
        ("/v2", "base"),
        ("/v2/_catalog", "catalog"),
        ("/v2/team/app/blobs/uploads/", "upload"),
        ("/v2/team/app/blobs/uploads/0f9c-41e2", "upload"),
        (f"/v2/team/app/blobs/{SHA}", "blob"),
        ("/v2/team/app/manifests/v1", "manifest"),
        (f"/v2/team/app/manifests/{SHA}", "manifest"),
        (f"/v2/team/app/referrers/{SHA}", "referrers"),
        ("/v2/team/app/tags/list", "tags"),
        # A repository may be named like an endpoint: the last endpoint-shaped tail decides.
        ("/v2/a/blobs/b/manifests/v1", "manifest"),
        ("/v2/x/manifests/blobs/uploads/u", "upload"),
        ("/v2/tags/list/tags/list", "tags"),
        ("/healthz", "ops"),
        ("/readyz", "ops"),
        ("/metrics", "ops"),
        ("/", "other"),
        ("/v2/team/app/unknown", "other"),
        ("/v2/team/app/blobs/uploads/u/extra", "other"),
        ("/v2//manifests/v1", "other"),
    ],
)
def test_kind(path: str, route: str) -> None:
    assert classify(path).kind == route


@given(st.text())
def test_the_kind_is_always_one_of_a_few(path: str) -> None:
    """Whatever a client sends, the label set stays bounded."""
    assert classify(path).kind in ROUTE_CLASSES


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/v2/a/b/blobs/uploads/", Target("upload", "a/b")),
        ("/v2/a/blobs/uploads/0f9c", Target("upload", "a", "0f9c")),
        (f"/v2/a/blobs/{SHA}", Target("blob", "a", SHA)),
        ("/v2/a/blobs/b/manifests/v1", Target("manifest", "a/blobs/b", "v1")),
        (f"/v2/x/referrers/{SHA}", Target("referrers", "x", SHA)),
        ("/v2/tags/list/tags/list", Target("tags", "tags/list")),
    ],
)
def test_name_and_reference(path: str, target: Target) -> None:
    assert classify(path) == target


def _old_router() -> web.Application:
    """aiohttp's own route patterns, as the proxy routed before one classifier did: a second
    grammar to check the classifier against."""
    app = web.Application()

    def named(name: str):  # type: ignore[no-untyped-def]
        async def handler(request: web.Request) -> str:
            return name

        return handler

    manifests = "/v2/{name:.+}/manifests/{reference}"
    app.router.add_route("PUT", manifests, named("put_manifest"))
    app.router.add_route("DELETE", manifests, named("delete_manifest"))
    app.router.add_get(manifests, named("get_manifest"))
    app.router.add_get("/v2/{name:.+}/referrers/{digest}", named("get_referrers"))
    app.router.add_get("/v2/{name:.+}/tags/list", named("tags_list"))
    app.router.add_route("*", "/v2", named("forward"))
    app.router.add_route("*", "/v2/{tail:.*}", named("forward"))
    app.freeze()
    return app


OWN = {
    ("manifest", "PUT"): "put_manifest",
    ("manifest", "DELETE"): "delete_manifest",
    ("manifest", "GET"): "get_manifest",
    ("manifest", "HEAD"): "get_manifest",
    ("referrers", "GET"): "get_referrers",
    ("referrers", "HEAD"): "get_referrers",
    ("tags", "GET"): "tags_list",
    ("tags", "HEAD"): "tags_list",
}  # proxy/app.py `own`


async def test_the_classifier_routes_as_the_old_route_table_did() -> None:
    """Every path of up to 3 endpoint-word segments, every method: the same handler, name and
    reference as aiohttp's route patterns give."""
    words = ["a", "blobs", "uploads", "manifests", "tags", "list", "referrers", SHA, "v1", ""]
    paths = ["/v2", "/v2/"] + [
        "/v2/" + "/".join(combo)
        for n in range(1, 4)
        for combo in itertools.product(words, repeat=n)
    ]
    app = _old_router()
    for path in paths:
        if path_problem(path) is not None:
            continue
        target = classify(path)
        for method in ("GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "POST"):
            request = make_mocked_request(method, path, app=app)
            match = await app.router.resolve(request)
            old = await match.handler(request)
            assert OWN.get((target.kind, method), "forward") == old, (method, path)
            if old in ("put_manifest", "delete_manifest", "get_manifest", "get_referrers"):
                reference = match.get("reference") or match.get("digest")
                assert (target.name, target.reference) == (match["name"], reference), path


def test_blobs_uploads_without_its_slash_is_an_upload() -> None:
    """`/v2/a/blobs/uploads` is an upload without its slash (Distribution answers 301 to
    `.../uploads/`), not a blob whose digest is "uploads" (once a 400 DIGEST_INVALID)."""
    assert classify("/v2/a/blobs/uploads").kind == "upload"
    assert path_problem("/v2/a/blobs/uploads") is None
