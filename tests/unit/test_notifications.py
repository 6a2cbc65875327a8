"""Distribution's notification envelopes (shapes as Distribution 2.8.2 sends them)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from proxy.config import SettingsError, parse_token
from proxy.oci.notifications import (
    Deleted,
    EnvelopeInvalid,
    Pushed,
    credentials_header,
    parse_envelope,
    token_matches,
)

DIGEST = "sha256:" + "2c" * 32
OTHER = "sha256:" + "84" * 32


def event(action: str, **target: Any) -> dict[str, Any]:
    return {
        "id": "debe3dfb",
        "timestamp": "2026-12-03T08:38:29.846533567Z",
        "action": action,
        "target": target,
        "request": {"method": "PUT"},
        "actor": {},
        "source": {"addr": "vm:5000"},
    }


MANIFEST_PUSH = event(
    "push",
    mediaType="application/vnd.oci.image.manifest.v1+json",
    size=583,
    digest=DIGEST,
    length=583,
    repository="a/b",
    url=f"http://127.0.0.1:5000/v2/a/b/manifests/{DIGEST}",
)


def envelope(*events: dict[str, Any]) -> bytes:
    return orjson.dumps({"events": list(events)})


def test_manifest_pushes_and_deletes_are_kept_in_order() -> None:
    tagged = {**MANIFEST_PUSH, "target": {**MANIFEST_PUSH["target"], "tag": "v1"}}
    deleted = event("delete", digest=OTHER, repository="a/b")
    assert parse_envelope(envelope(MANIFEST_PUSH, deleted, tagged)) == [
        Pushed("a/b", DIGEST, None),
        Deleted("a/b", OTHER),
        Pushed("a/b", DIGEST, "v1"),
    ]


@pytest.mark.parametrize(
    "skipped",
    [
        event("pull", **MANIFEST_PUSH["target"]),
        event("push", mediaType="application/octet-stream", digest=DIGEST, repository="a/b"),
        event(
            "push",
            mediaType="application/vnd.docker.distribution.manifest.v2+json",
            digest=DIGEST,
            repository="a/b",
        ),
        event("mount", mediaType="application/octet-stream", digest=DIGEST, repository="a/b"),
        event("push", digest=DIGEST, repository="a/b"),  # no mediaType: nothing to go on
        {**MANIFEST_PUSH, "target": {**MANIFEST_PUSH["target"], "tag": "_referrer.sha256-ab"}},
        {**MANIFEST_PUSH, "target": {**MANIFEST_PUSH["target"], "tag": "sha256-" + "ab" * 32}},
        # Pulls and blobs are skipped before anything in them is checked.
        event("pull", digest="nonsense", repository="../x"),
    ],
)
def test_what_cannot_name_a_referrer_is_skipped(skipped: dict[str, Any]) -> None:
    assert parse_envelope(envelope(skipped)) == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"events": {}}',
        envelope(MANIFEST_PUSH, "push"),  # type: ignore[arg-type]
        envelope({"target": MANIFEST_PUSH["target"]}),
        envelope(MANIFEST_PUSH, event("delete", digest="sha256:zz", repository="a/b")),
        envelope(event("delete", digest=DIGEST, repository="A/../b")),
        envelope(event("delete", digest=DIGEST)),
        envelope({**MANIFEST_PUSH, "target": {**MANIFEST_PUSH["target"], "tag": 5}}),
        envelope({**MANIFEST_PUSH, "target": "a/b"}),
        # Was a TypeError (unhashable), a 500 that Distribution retries forever.
        envelope({**MANIFEST_PUSH, "target": {**MANIFEST_PUSH["target"], "mediaType": []}}),
        envelope({**MANIFEST_PUSH, "target": {**MANIFEST_PUSH["target"], "mediaType": {}}}),
        envelope(*[MANIFEST_PUSH] * 1001),
    ],
)
def test_a_malformed_envelope_is_refused_whole(body: bytes) -> None:
    with pytest.raises(EnvelopeInvalid):
        parse_envelope(body)


def test_the_token_must_match_exactly() -> None:
    token = "s3cret-token-of-32-characters-xx"
    assert token_matches(f"Bearer {token}", token)
    for wrong in (None, "", token, f"bearer {token}", f"Bearer {token}x", f"Bearer {token[:-1]}"):
        assert not token_matches(wrong, token)


def test_tokens_too_short_or_unfit_for_a_header_are_refused() -> None:
    assert parse_token(" 0123456789abcdef\n") == "0123456789abcdef"
    for bad in ("short", "0123456789 abcdef", "0123456789abcdef\u00e9", "0123456789\tabcdefg"):
        with pytest.raises(SettingsError):
            parse_token(bad)


def test_credentials_file_text_becomes_basic_auth() -> None:
    header = credentials_header("puller:pa:ss\n")
    assert base64.b64decode(header.removeprefix("Basic ")) == b"puller:pa:ss"
    for bad in ("", "no-colon", ":password"):
        with pytest.raises(ValueError, match="user:password"):
            credentials_header(bad)


def test_review18_a_non_utf8_authorization_is_refused_not_a_500() -> None:
    """aiohttp hands undecodable header bytes over as surrogates: `.encode()` raised, an
    unauthenticated request got a 500 and a traceback in the log."""
    assert not token_matches("Bearer \udcff\udcfe", "t" * 20)
