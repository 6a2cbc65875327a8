"""`referrers-proxy reindex`: rebuild the index from what the registry holds.

Walks the catalog (or the repositories named), every tag, every manifest reachable from a tag
(index children included) and every descriptor listed by a tag-schema index, and records each
manifest with a subject. Adding is idempotent, so a run can be repeated; `--resume` skips the
repositories a previous run finished.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

from proxy.config import MiB, Settings
from proxy.index import IndexStore, open_index
from proxy.manifest import IMAGE_INDEX, MAX_ANNOTATION_BYTES, ManifestInvalid, inspect_manifest
from proxy.names import is_digest
from proxy.registry_client import RegistryClient
from proxy.tags_api import next_upstream_page
from proxy.tagschema import is_tag_schema_name, keep_tag_digest
from proxy.upstream import open_session

log = logging.getLogger(__name__)
MAX_PAGES = 10_000
BAR_WIDTH = 24
REINDEX_MAX_BODY = 64 * MiB  # catalog and tag lists can be far larger than a manifest
_CHILD_LISTS = frozenset({IMAGE_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json"})


class ReindexFailed(Exception):
    """The walk cannot start: the registry refused the catalog."""


@dataclass
class Summary:
    repositories: int = 0
    manifests: int = 0
    referrers: int = 0
    errors: int = 0
    skipped: int = 0

    def line(self) -> str:
        return (
            f"repositories {self.repositories}, manifests read {self.manifests}, referrers"
            f" indexed {self.referrers}, errors {self.errors}, resumed past {self.skipped}"
        )


@dataclass
class _Repository:
    name: str
    seen: set[str] = field(default_factory=set)


class Reindexer:
    def __init__(
        self,
        client: RegistryClient,
        index: IndexStore | None,
        *,
        auth: str | None,
        progress: TextIO = sys.stderr,
        max_annotation_bytes: int = MAX_ANNOTATION_BYTES,
    ) -> None:
        self.client = client
        self.max_annotation_bytes = max_annotation_bytes
        self.index = index
        self.auth = auth
        self.progress = progress
        self.summary = Summary()

    async def run(self, repositories: list[str], done: set[str]) -> AsyncIterator[str]:
        """Index each repository; yields each name once it is finished (for checkpoints)."""
        names = repositories or [
            name async for name in self._pages("/v2/_catalog?n=1000", "repositories")
        ]
        for position, name in enumerate(names, 1):
            if name in done:
                self.summary.skipped += 1
                continue
            self._show(position, len(names), name)
            await self._repository(_Repository(name))
            self.summary.repositories += 1
            yield name
        self.progress.write("\n" if self.progress.isatty() else "")

    def _show(self, position: int, total: int, name: str) -> None:
        filled = BAR_WIDTH * position // max(total, 1)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        text = f"[{bar}] {position}/{total} {name}: {self.summary.line()}"
        if self.progress.isatty():
            self.progress.write(f"\r\033[K{text}")
        else:
            self.progress.write(text + "\n")
        self.progress.flush()

    async def _pages(self, path: str, key: str) -> AsyncIterator[str]:
        next_path: str | None = path
        for _ in range(MAX_PAGES):
            if next_path is None:
                return
            answer = await self.client.call("GET", next_path, auth=self.auth)
            if answer.status != 200:
                if key == "repositories":
                    raise ReindexFailed(f"GET {next_path}: {answer.status} {answer.body[:200]!r}")
                log.warning("GET %s: %d", next_path, answer.status)
                self.summary.errors += 1
                return
            for item in orjson.loads(answer.body).get(key) or []:
                yield item
            next_path = next_upstream_page(answer.headers.get("Link"))

    async def _repository(self, repo: _Repository) -> None:
        async for tag in self._pages(f"/v2/{repo.name}/tags/list", "tags"):
            # A keep tag names its referrer: read by digest, so a referrer a tag-schema index
            # also lists is read (and counted) once.
            document = await self._manifest(repo, keep_tag_digest(tag) or tag)
            if document is not None and is_tag_schema_name(tag):
                for entry in _listed(document):
                    await self._manifest(repo, entry)

    async def _manifest(self, repo: _Repository, reference: str, depth: int = 0) -> Any:
        """Read one manifest, record it if it has a subject, and walk an index's children."""
        if reference in repo.seen:
            return None
        repo.seen.add(reference)
        answer = await self.client.get_manifest(repo.name, reference, self.auth)
        if answer.status != 200:
            log.warning("%s@%s: %d", repo.name, reference, answer.status)
            self.summary.errors += 1
            return None
        self.summary.manifests += 1
        repo.seen.add(answer.content_digest)
        content_type = answer.headers.get("Content-Type", "")
        algorithm = reference.partition(":")[0] if is_digest(reference) else "sha256"
        try:
            referrer = inspect_manifest(
                answer.body, content_type, algorithm, self.max_annotation_bytes
            )
        except ManifestInvalid as exc:
            log.warning("%s@%s: %s", repo.name, reference, exc)
            self.summary.errors += 1
            referrer = None
        if referrer is not None:
            if self.index is not None:
                await self.index.add(repo.name, referrer)
            self.summary.referrers += 1
        try:
            document = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            return None
        if content_type.split(";")[0].strip() in _CHILD_LISTS and depth < 4:
            for child in _listed(document):
                await self._manifest(repo, child, depth + 1)
        return document


def _listed(document: Any) -> list[str]:
    """Digests of the manifests an index lists."""
    entries = document.get("manifests") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return []
    return [
        e["digest"]
        for e in entries
        if isinstance(e, dict) and isinstance(e.get("digest"), str) and is_digest(e["digest"])
    ]


async def reindex(
    settings: Settings,
    *,
    repositories: list[str],
    auth: str | None,
    done: set[str],
    marks: TextIO | None,
    out: TextIO = sys.stdout,
) -> Summary:
    """Run a whole reindex, skipping the repositories in `done` and appending each finished one
    to `marks` (the checkpoint a later `--resume` reads)."""
    index = open_index(settings) if settings.uses_redis else None
    if index is None:
        log.warning("no --redis-url: nothing is recorded, this run only counts")
    async with open_session(settings) as session:
        client = RegistryClient(session, settings.upstream, max_body=REINDEX_MAX_BODY)
        walker = Reindexer(
            client, index, auth=auth, max_annotation_bytes=settings.max_annotation_bytes
        )
        try:
            async for name in walker.run(repositories, done):
                if marks is not None:
                    marks.write(name + "\n")
                    marks.flush()
        finally:
            if index is not None:
                await index.close()
    out.write(f"reindex: {walker.summary.line()}\n")
    return walker.summary
