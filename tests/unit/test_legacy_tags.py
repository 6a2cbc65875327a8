from __future__ import annotations

import base64

from proxy.cli import legacy_from_args
from proxy.oci.legacy_tags import LegacyKind, legacy_kind, tag_subject, why_not_by_digest

HEX = "a" * 64
INDEX_DIGEST = "sha256:" + "b" * 64


def test_only_schema_names_and_keep_tags_are_legacy() -> None:
    assert legacy_kind(f"sha256-{HEX}") is LegacyKind.TAG_INDEX
    assert legacy_kind(f"_referrer.sha256-{HEX}") is LegacyKind.KEEP_TAG
    assert legacy_kind(f"sha256-{HEX}.sig") is None, "cosign's signature tag"
    assert legacy_kind("v1") is None
    assert tag_subject(f"sha256-{HEX}") == f"sha256:{HEX}"


def test_a_keep_tag_never_goes_by_digest() -> None:
    reason = why_not_by_digest(LegacyKind.KEEP_TAG, "_referrer.x", INDEX_DIGEST, {})
    assert "referrer itself" in (reason or "")


def test_a_tag_index_goes_by_digest_only_when_no_other_tag_names_it() -> None:
    tag = f"sha256-{HEX}"
    alone = {INDEX_DIGEST: {tag}}
    assert why_not_by_digest(LegacyKind.TAG_INDEX, tag, INDEX_DIGEST, alone) is None
    shared = {INDEX_DIGEST: {tag, "pinned"}}
    reason = why_not_by_digest(LegacyKind.TAG_INDEX, tag, INDEX_DIGEST, shared)
    assert "pinned" in (reason or "")


def test_command_line_is_a_dry_run_by_default_with_basic_auth_from_env() -> None:
    env = {"REFERRERS_PROXY_UPSTREAM": "http://r:5000", "REFERRERS_PROXY_UPSTREAM_PASSWORD": "pw"}
    command = legacy_from_args(["legacy-artifacts", "--upstream-username", "u"], env)
    assert (command.delete, command.force, command.only, command.repositories) == (
        False,
        False,
        None,
        [],
    )
    assert command.auth == "Basic " + base64.b64encode(b"u:pw").decode()
    command = legacy_from_args(
        ["legacy-artifacts", "--delete", "--only", "tag-index", "--repository", "a/b"], env
    )
    assert (command.delete, command.only, command.repositories) == (
        True,
        LegacyKind.TAG_INDEX,
        ["a/b"],
    )
