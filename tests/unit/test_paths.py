import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.paths import MAX_TARGET, path_problem, target_problem

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
