"""`referrers-proxy reindex`: rebuild the index from what the registry holds.

Walks the catalog (or the repositories named), every tag, every manifest reachable from a tag
(index children included) and every descriptor listed by a tag-schema index, and records each
manifest with a subject. Keep tags name their referrers, so a registry that holds no tag-schema
index at all is rebuilt just the same. With keep tags on it is also the migration: a referrer
found without its keep tag (pushed by a legacy client, or through a proxy before keep tags) gets
one, so `garbage-collect --delete-untagged` keeps it. Adding is idempotent, so a run can be
repeated; `--resume` skips the repositories a previous run finished.

In front of a registry that answers the Referrers API itself it adds no keep tags (the registry
records its referrers), and with `--import-native` asks it for the referrers of every manifest
read, so the index holds those too.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO

import orjson
from aiohttp import hdrs

from proxy.config import Settings
from proxy.index import IndexStore, open_index
from proxy.oci.errors import UpstreamRefused
from proxy.oci.manifest import (
    IMAGE_INDEX,
    MAX_ANNOTATION_BYTES,
    ManifestInvalid,
    Referrer,
    inspect_manifest,
    media_type,
)
from proxy.oci.names import is_digest
from proxy.oci.tagschema import (
    TagIndexInvalid,
    is_tag_schema_name,
    keep_tag_digest,
    parse_tag_index,
)
from proxy.services import registry_lists
from proxy.services.keep_tags import KeepTags
from proxy.services.registry_lists import READ_FAILURES, Repository
from proxy.upstream.client import MAX_LIST_BODY, RegistryClient
from proxy.upstream.native import ZERO_DIGEST, ask_native
from proxy.upstream.session import open_session

log = logging.getLogger(__name__)
BAR_WIDTH = 24
CONCURRENCY = 16  # manifests read at once
SHOW_EVERY = 500  # manifests between progress lines within one repository
_CHILD_LISTS = frozenset({IMAGE_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json"})


@dataclass
class Summary:
    repositories: int = 0
    manifests: int = 0
    referrers: int = 0
    errors: int = 0
    skipped: int = 0
    keep_tags: int = 0

    def line(self) -> str:
        return (
            f"repositories {self.repositories}, manifests read {self.manifests}, referrers"
            f" indexed {self.referrers}, keep tags added {self.keep_tags}, errors {self.errors},"
            f" resumed past {self.skipped}"
        )


class Reindexer:
    def __init__(
        self,
        client: RegistryClient,
        index: IndexStore | None,
        *,
        auth: str | None,
        progress: TextIO = sys.stderr,
        max_annotation_bytes: int = MAX_ANNOTATION_BYTES,
        keep_tags: bool = False,
        import_native: bool = False,
    ) -> None:
        self.client = client
        self.keep_tags = KeepTags(client, keep_tags)
        self.import_native = import_native
        self._reads = asyncio.Semaphore(CONCURRENCY)
        self.max_annotation_bytes = max_annotation_bytes
        self.index = index
        self.auth = auth
        self.progress = progress
        self.summary = Summary()

    async def run(self, repositories: list[str], done: set[str]) -> AsyncIterator[str]:
        """Index each repository; yields each name once it is finished without an error (for
        checkpoints: a `--resume` walks again what was read only in part)."""
        names = await registry_lists.repositories(self.client, repositories, self.auth)
        if names and await ask_native(self.client, names[0], ZERO_DIGEST, self.auth):
            # The registry keeps its referrers itself: nothing of the proxy's is written there.
            log.info("the registry answers the Referrers API: no keep tags are added")
            self.keep_tags = KeepTags(self.client, False)
        else:
            self.import_native = False
        for position, name in enumerate(names, 1):
            if name in done:
                self.summary.skipped += 1
                continue
            repo = Repository(name, position, len(names))
            self._show(repo)
            errors = self.summary.errors
            await self._repository(repo)
            self.summary.repositories += 1
            if self.summary.errors == errors:
                yield name
        self.progress.write("\n" if self.progress.isatty() else "")

    def _show(self, repo: Repository) -> None:
        filled = BAR_WIDTH * repo.position // max(repo.total, 1)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        text = f"[{bar}] {repo.position}/{repo.total} {repo.name}: {self.summary.line()}"
        if self.progress.isatty():
            self.progress.write(f"\r\033[K{text}")
        else:
            self.progress.write(text + "\n")
        self.progress.flush()

    async def _repository(self, repo: Repository) -> None:
        tags, complete = await registry_lists.tags(self.client, repo.name, self.auth)
        self.summary.errors += not complete
        # A keep tag names its referrer: read by digest, so a referrer a tag-schema index also
        # lists is read (and counted) once.
        repo.kept = {digest for digest in map(keep_tag_digest, tags) if digest is not None}
        await self._each(repo, tags, self._tag)

    async def _each(
        self,
        repo: Repository,
        references: list[str],
        read: Callable[[Repository, str, int], Awaitable[Any]],
        depth: int = 0,
    ) -> None:
        """`read(repo, reference, depth)` for each, CONCURRENCY at a time at most."""
        for first in range(0, len(references), CONCURRENCY):
            chunk = references[first : first + CONCURRENCY]
            await asyncio.gather(*(read(repo, reference, depth) for reference in chunk))

    async def _tag(self, repo: Repository, tag: str, depth: int) -> None:
        document = await self._manifest(repo, keep_tag_digest(tag) or tag, depth)
        if document is not None and is_tag_schema_name(tag):
            await self._each(repo, _listed(document), self._manifest)

    async def _manifest(self, repo: Repository, reference: str, depth: int = 0) -> Any:
        """Read one manifest, record it if it has a subject (tagging it to keep, if asked and
        it is not yet), and walk an index's children."""
        if reference in repo.seen:
            return None
        repo.seen.add(reference)
        try:
            async with self._reads:
                answer = await self.client.get_manifest(repo.name, reference, self.auth)
        except READ_FAILURES as exc:  # one manifest: the walk goes on, --resume reads it again
            log.warning("%s@%s: %s: %s", repo.name, reference, type(exc).__name__, exc)
            self.summary.errors += 1
            return None
        if answer.status != 200:
            log.warning("%s@%s: %d", repo.name, reference, answer.status)
            self.summary.errors += 1
            return None
        self.summary.manifests += 1
        if self.summary.manifests % SHOW_EVERY == 0:
            self._show(repo)
        repo.seen.add(answer.content_digest)
        if self.import_native:
            await self._import_native(repo, answer.content_digest)
        content_type = answer.headers.get(hdrs.CONTENT_TYPE, "")
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
            await self._found(repo, referrer, answer.body, content_type)
        try:
            document = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            return None
        if media_type(content_type) in _CHILD_LISTS and depth < 4:
            await self._each(repo, _listed(document), self._manifest, depth + 1)
        return document

    async def _import_native(self, repo: Repository, subject: str) -> None:
        """The registry's own referrers of `subject`, every page, into the index."""
        path = f"/v2/{repo.name}/referrers/{subject}"
        try:
            async with self._reads:  # one subject's pages, one at a time
                async for answer in self.client.pages(
                    path, self.auth, headers={hdrs.ACCEPT: IMAGE_INDEX}
                ):
                    listed = parse_tag_index(
                        subject,
                        answer.body,
                        answer.headers.get(hdrs.CONTENT_TYPE, ""),
                        "",
                        self.max_annotation_bytes,
                    ).referrers
                    kept = [r for r in listed if not await self._deleted(repo, r)]
                    if kept and self.index is not None:
                        await self.index.add_listed(repo.name, subject, kept)
                    self.summary.referrers += len(kept)
        except (TagIndexInvalid, *READ_FAILURES) as exc:
            log.warning("%s %s: referrers not imported: %s", repo.name, subject, exc)
            self.summary.errors += 1

    async def _found(
        self, repo: Repository, referrer: Referrer, body: bytes, content_type: str
    ) -> None:
        """Record a referrer the walk read (a subclass may do something else with it)."""
        if await self._deleted(repo, referrer):
            return
        if self.index is not None:
            # Listing semantics: a referrer deleted since it was read stays deleted.
            await self.index.add_listed(repo.name, referrer.subject, [referrer])
        self.summary.referrers += 1
        if self.keep_tags.enabled and referrer.digest not in repo.kept:
            await self._keep(repo, referrer, body, content_type)

    async def _deleted(self, repo: Repository, referrer: Referrer) -> bool:
        """Deleted through the proxy since the walk read it (the index tombstoned it)."""
        if self.index is None:
            return False
        return await self.index.tombstoned(repo.name, referrer.subject, referrer.digest)

    async def _keep(
        self, repo: Repository, referrer: Referrer, body: bytes, media_type: str
    ) -> None:
        """The same bytes under the referrer's keep tag: the same digest, now tagged. A PUT
        re-creates a manifest deleted meanwhile, so a delete that landed during it is made
        again."""
        try:
            async with self._reads:
                await self.keep_tags.keep(repo.name, referrer, body, media_type, self.auth)
        except UpstreamRefused:  # logged
            self.summary.errors += 1
            return
        if await self._deleted(repo, referrer):
            log.info(
                "%s: %s was deleted while tagged; deleting it again", repo.name, referrer.digest
            )
            await self.client.delete_manifest(repo.name, referrer.digest, self.auth)
            return
        repo.kept.add(referrer.digest)
        self.summary.keep_tags += 1


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


async def checkpointed(finished: AsyncIterator[str], marks: TextIO | None) -> None:
    """Run a walk, appending each repository it finishes to `marks` (what `--resume` reads)."""
    async for name in finished:
        if marks is not None:
            marks.write(name + "\n")
            marks.flush()


async def reindex(
    settings: Settings,
    *,
    repositories: list[str],
    auth: str | None,
    done: set[str],
    marks: TextIO | None,
    out: TextIO = sys.stdout,
    import_native: bool = False,
) -> Summary:
    """Run a whole reindex, skipping the repositories in `done` and appending each finished one
    to `marks` (the checkpoint a later `--resume` reads)."""
    index = open_index(settings) if settings.uses_redis else None
    if index is None:
        log.warning(
            "no --redis-url: no index is rebuilt; missing keep tags are still added"
            " (--keep-tags false to only count)"
        )
    async with open_session(settings) as session:
        client = RegistryClient(session, settings.upstream, max_body=MAX_LIST_BODY)
        walker = Reindexer(
            client,
            index,
            auth=auth,
            max_annotation_bytes=settings.max_annotation_bytes,
            keep_tags=settings.keep_tags,
            import_native=import_native,
        )
        try:
            await checkpointed(walker.run(repositories, done), marks)
        finally:
            if index is not None:
                await index.close()
    out.write(f"reindex: {walker.summary.line()}\n")
    return walker.summary
