from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.manifest import IMAGE_INDEX
from proxy.referrers import (
    CURSOR_PARAM,
    CursorInvalid,
    decode_cursor,
    encode_cursor,
    next_link,
    render_index,
)


def test_render_index_is_an_oci_image_index_in_the_given_order() -> None:
    descriptors = [orjson.dumps({"digest": f"sha256:{n}"}) for n in (3, 1, 2)]
    assert orjson.loads(render_index(descriptors)) == {
        "schemaVersion": 2,
        "mediaType": IMAGE_INDEX,
        "manifests": [{"digest": "sha256:3"}, {"digest": "sha256:1"}, {"digest": "sha256:2"}],
    }
    assert orjson.loads(render_index([]))["manifests"] == []


@given(st.integers(min_value=0, max_value=2**63))
def test_cursors_round_trip(position: int) -> None:
    assert decode_cursor(encode_cursor(position)) == position


@pytest.mark.parametrize("token", ["", "!!", "cDEy!", encode_cursor(5)[:-1] + "*", "eDEy", "cA"])
def test_garbage_cursors_are_refused(token: str) -> None:
    with pytest.raises(CursorInvalid):
        decode_cursor(token)


def test_next_link_keeps_the_filters_and_the_cursor() -> None:
    types = ["application/vnd.example+json", "application/spdx+json"]
    link = next_link("team/app", "sha256:" + "a" * 64, types, 42)
    assert link.startswith("</v2/team/app/referrers/sha256:" + "a" * 64 + "?")
    assert link.endswith('>; rel="next"')
    target = urlsplit(link[1 : link.index(">")])
    assert "+" not in target.query, "a literal + would be read as a space"
    query = parse_qsl(target.query)
    assert [v for k, v in query if k == "artifactType"] == types
    assert decode_cursor(dict(query)[CURSOR_PARAM]) == 42
