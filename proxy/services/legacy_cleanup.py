"""`referrers-proxy legacy-artifacts`: after the registry gained the Referrers API, list (or with
`--delete` remove) the tag-schema indexes and keep tags written while it lacked it.

A dry run by default. A tag is deleted alone where the registry can (OCI 1.1 `DELETE
/manifests/<tag>`); where it deletes by digest only (Distribution 2.8), a tag-schema index goes
by digest when no other tag names it, and a keep tag stays (its digest is the referrer's own).
Deleting in front of a registry that still lacks the API takes the legacy clients' only way to
find referrers, so it needs `--force` there.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from typing import TextIO

import orjson
from aiohttp import hdrs

from proxy.config import Settings
from proxy.oci.legacy_tags import LegacyKind, legacy_kind, tag_subject, why_not_by_digest
from proxy.oci.manifest import ManifestInvalid, Referrer, inspect_manifest
from proxy.oci.tagschema import TagIndexInvalid, keep_tag_digest, parse_tag_index
from proxy.services import registry_lists
from proxy.services.registry_lists import WalkRefused
from proxy.upstream.client import ACCEPT_MANIFESTS, MAX_LIST_BODY, RegistryClient
from proxy.upstream.native import ZERO_DIGEST, ask_native
from proxy.upstream.session import open_session

log = logging.getLogger(__name__)
CONCURRENCY = 16  # tags resolved at once


class CleanupRefused(WalkRefused):
    """Deleting needs --force: the registry does not prove it answers the Referrers API."""


@dataclass
class Summary:
    tag_indexes: int = 0
    keep_tags: int = 0
    removed: int = 0
    left: int = 0
    errors: int = 0

    def line(self) -> str:
        return (
            f"tag-schema indexes {self.tag_indexes}, keep tags {self.keep_tags}, removed"
            f" {self.removed}, left {self.left}, errors {self.errors}"
        )


class LegacyCleanup:
    def __init__(
        self,
        client: RegistryClient,
        *,
        auth: str | None,
        delete: bool,
        out: TextIO,
        only: LegacyKind | None = None,
    ) -> None:
        self.client = client
        self.only = only
        self.auth = auth
        self.delete = delete
        self.out = out
        self.summary = Summary()

    async def run(self, repositories: list[str], *, force: bool = False) -> None:
        names = await registry_lists.repositories(self.client, repositories, self.auth)
        if self.delete and names and not force:
            native = await ask_native(self.client, names[0], ZERO_DIGEST, self.auth)
            if native is not True:
                raise CleanupRefused(
                    "the registry does not (provably) answer the Referrers API: legacy clients"
                    " still read these tags; --force to delete them anyway"
                )
        for name in names:
            await self._repository(name)

    async def _repository(self, name: str) -> None:
        # Which other tags a delete by digest would take is known only from a complete list.
        tags, complete = await registry_lists.tags(self.client, name, self.auth)
        self.summary.errors += not complete
        by_digest: dict[str, set[str]] | None = None
        for tag in sorted(tags):
            kind = legacy_kind(tag)
            if kind is None or self.only not in (None, kind):
                continue
            digest = await self._legacy_digest(name, tag, kind)
            if digest is None:
                continue
            if kind is LegacyKind.TAG_INDEX:
                self.summary.tag_indexes += 1
            else:
                self.summary.keep_tags += 1
            self.out.write(f"{name}:{tag}\t{kind}\t{digest}\n")
            if not self.delete:
                continue
            gone = await self.client.call("DELETE", f"/v2/{name}/manifests/{tag}", auth=self.auth)
            if gone.status not in (400, 405):  # what registries that delete by digest only say
                self._count_removed(name, tag, gone.status)
                continue
            if by_digest is None and complete:
                by_digest = await self._tags_by_digest(name, tags)
                complete = by_digest is not None
            reason = (
                why_not_by_digest(kind, tag, digest, by_digest)
                if by_digest is not None
                else "not every tag of the repository could be read: which others name the same"
                " manifest is unknown"
            )
            if reason is not None:
                log.warning("%s:%s left: %s", name, tag, reason)
                self.summary.left += 1
                continue
            gone = await self.client.delete_manifest(name, digest, self.auth)
            self._count_removed(name, tag, gone.status)

    def _count_removed(self, name: str, tag: str, status: int) -> None:
        if status in (200, 202, 404):
            self.summary.removed += 1
            log.info("%s:%s removed", name, tag)
        else:
            log.error("%s:%s not removed: the registry answered %d", name, tag, status)
            self.summary.errors += 1

    async def _legacy_digest(self, name: str, tag: str, kind: LegacyKind) -> str | None:
        """The digest of what the tag names, when it is what its name says: a referrers index
        of that subject, or the referrer its keep tag names. Anything else is left alone."""
        answer = await self.client.get_manifest(name, tag, self.auth)
        if answer.status != 200:
            log.warning("%s:%s: %d", name, tag, answer.status)
            self.summary.errors += 1
            return None
        digest = answer.content_digest
        if kind is LegacyKind.TAG_INDEX:
            content_type = answer.headers.get(hdrs.CONTENT_TYPE, "")
            try:
                listed = parse_tag_index(tag_subject(tag), answer.body, content_type, digest)
            except TagIndexInvalid as exc:
                log.warning("%s:%s is not a referrers index (%s): left alone", name, tag, exc)
                return None
            if not await self._lists_referrers(name, tag, answer.body, listed.referrers):
                return None
        elif keep_tag_digest(tag) != digest or not _has_subject(answer.body):
            log.warning("%s:%s is not the keep tag of its referrer: left alone", name, tag)
            return None
        return digest

    async def _lists_referrers(
        self, name: str, tag: str, body: bytes, listed: list[Referrer]
    ) -> bool:
        """An image index whose children are platforms (a multi-arch image tagged like a
        digest) is no referrers index: no entry may name a platform, and the first one listed
        must be a referrer of the tag's subject."""
        entries = orjson.loads(body).get("manifests") or []
        if any(isinstance(entry, dict) and "platform" in entry for entry in entries):
            log.warning("%s:%s lists platforms, an image: left alone", name, tag)
            return False
        if not listed:
            return True
        child = await self.client.get_manifest(name, listed[0].digest, self.auth)
        try:
            found = inspect_manifest(child.body, child.headers.get(hdrs.CONTENT_TYPE, ""))
        except ManifestInvalid:
            found = None
        if child.status != 200 or found is None or found.subject != tag_subject(tag):
            log.warning("%s:%s lists no referrer of its subject: left alone", name, tag)
            return False
        return True

    async def _tags_by_digest(self, name: str, tags: list[str]) -> dict[str, set[str]] | None:
        """Which tags name each manifest (HEAD each tag, CONCURRENCY at a time); None when one
        of them could not be read."""
        found: dict[str, set[str]] = {}
        unread: list[str] = []
        heads = asyncio.Semaphore(CONCURRENCY)

        async def head(tag: str) -> None:
            async with heads:
                answer = await self.client.call(
                    "HEAD",
                    f"/v2/{name}/manifests/{tag}",
                    auth=self.auth,
                    headers={hdrs.ACCEPT: ACCEPT_MANIFESTS},
                )
            digest = answer.headers.get("Docker-Content-Digest")
            if answer.status == 200 and digest:
                found.setdefault(digest, set()).add(tag)
            else:
                unread.append(tag)

        await asyncio.gather(*(head(tag) for tag in tags))
        if unread:
            log.warning("%s: %d tags unreadable (%s, ...)", name, len(unread), unread[0])
            self.summary.errors += 1
            return None
        return found


async def legacy_artifacts(
    settings: Settings,
    *,
    repositories: list[str],
    auth: str | None,
    delete: bool,
    force: bool,
    only: LegacyKind | None = None,
    out: TextIO = sys.stdout,
) -> Summary:
    async with open_session(settings) as session:
        client = RegistryClient(session, settings.upstream, max_body=MAX_LIST_BODY)
        cleanup = LegacyCleanup(client, auth=auth, delete=delete, out=out, only=only)
        await cleanup.run(repositories, force=force)
    verb = "" if delete else " (dry run: --delete to remove)"
    out.write(f"legacy-artifacts{verb}: {cleanup.summary.line()}\n")
    return cleanup.summary


def _has_subject(body: bytes) -> bool:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(document, dict) and isinstance(document.get("subject"), dict)
