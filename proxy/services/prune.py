"""`referrers-proxy prune`: find referrers whose subject is gone (orphans) and, with `--delete`,
delete them.

The walk is reindex's (catalog or named repositories, every tag, keep tags, tag-schema indexes,
index children), so it finds the referrers reindex would. A subject counts as absent only on the
registry's own `MANIFEST_UNKNOWN` 404 to the walk's credentials; any other answer (401, 5xx, a
router's 404) is an error and prunes nothing under it. Orphans are deleted deepest first, then
the tag-schema indexes of the subjects they hung from; deleting a manifest by digest takes its
keep tag with it. A dry run (the default) lists the same things and deletes nothing.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import TextIO

from proxy.config import Settings
from proxy.index import IndexStore, open_index
from proxy.oci.manifest import Referrer
from proxy.oci.orphans import hanging_from, subjects_to_check
from proxy.oci.tagschema import is_tag_schema_name, tag_name
from proxy.services.pull_access import proves_absent
from proxy.services.registry_lists import Repository
from proxy.services.reindex import Reindexer, Summary, checkpointed
from proxy.upstream.client import MAX_LIST_BODY, RegistryClient
from proxy.upstream.session import open_session

log = logging.getLogger(__name__)


@dataclass
class PruneSummary(Summary):
    orphans: int = 0
    deleted: int = 0

    def line(self) -> str:
        return (
            f"repositories {self.repositories}, manifests read {self.manifests}, referrers"
            f" {self.referrers}, orphans {self.orphans}, deleted {self.deleted}, errors"
            f" {self.errors}, resumed past {self.skipped}"
        )


class Pruner(Reindexer):
    def __init__(
        self,
        client: RegistryClient,
        index: IndexStore | None,
        *,
        auth: str | None,
        delete: bool,
        out: TextIO = sys.stdout,
        progress: TextIO = sys.stderr,
    ) -> None:
        super().__init__(client, index, auth=auth, progress=progress)
        self.delete = delete
        self.out = out
        self.counts = PruneSummary()
        self.summary = self.counts
        self._subject_of: defaultdict[str, dict[str, str]] = defaultdict(dict)
        self._schema_tags: defaultdict[str, set[str]] = defaultdict(set)

    async def _tag(self, repo: Repository, tag: str, depth: int) -> None:
        if is_tag_schema_name(tag):
            self._schema_tags[repo.name].add(tag)
        await super()._tag(repo, tag, depth)

    async def _found(
        self, repo: Repository, referrer: Referrer, body: bytes, content_type: str
    ) -> None:
        self._subject_of[repo.name][referrer.digest] = referrer.subject
        self.counts.referrers += 1

    async def _repository(self, repo: Repository) -> None:
        await super()._repository(repo)
        subject_of = self._subject_of.pop(repo.name, {})
        schema_tags = self._schema_tags.pop(repo.name, set())
        absent = {s for s in subjects_to_check(subject_of) if await self._absent(repo.name, s)}
        orphans = hanging_from(subject_of, absent)
        self.counts.orphans += len(orphans)
        verb = "deleting" if self.delete else "orphan"
        for digest in orphans:
            self.out.write(f"{verb} {repo.name}@{digest} (subject {subject_of[digest]})\n")
            if self.delete:
                await self._remove(repo.name, digest)
        gone = absent | set(orphans)
        for tag in sorted(schema_tags & {tag_name(subject) for subject in gone}):
            self.out.write(f"{verb} {repo.name}:{tag} (tag-schema index of a deleted subject)\n")
            if self.delete:
                await self._remove_tag(repo.name, tag)
        self.out.flush()

    async def _absent(self, name: str, subject: str) -> bool:
        answer = await self.client.get_manifest(name, subject, self.auth)
        if answer.status == 200:
            return False
        if proves_absent(answer):
            return True
        log.warning(
            "%s@%s: subject check answered %d; nothing under it pruned",
            name,
            subject,
            answer.status,
        )
        self.counts.errors += 1
        return False

    async def _remove(self, name: str, digest: str) -> None:
        answer = await self.client.delete_manifest(name, digest, self.auth)
        if answer.status != 202 and not proves_absent(answer):
            log.error(
                "%s@%s: delete refused (%d): %r", name, digest, answer.status, answer.body[:300]
            )
            self.counts.errors += 1
            return
        if self.index is not None:
            await self.index.remove(name, digest)
        self.counts.deleted += 1

    async def _remove_tag(self, name: str, tag: str) -> None:
        """Distribution deletes by digest only: the tag's current one."""
        answer = await self.client.get_manifest(name, tag, self.auth)
        if answer.status == 200:
            await self._remove(name, answer.content_digest)
        elif answer.status != 404:
            log.error("%s:%s: read answered %d", name, tag, answer.status)
            self.counts.errors += 1


async def prune(
    settings: Settings,
    *,
    repositories: list[str],
    auth: str | None,
    delete: bool,
    done: set[str],
    marks: TextIO | None,
    out: TextIO = sys.stdout,
) -> PruneSummary:
    """Run a whole prune, skipping the repositories in `done` and appending each finished one
    to `marks` (the checkpoint a later `--resume` reads). With Redis, deleted referrers leave
    the index too; the embedded index of a running proxy forgets them when it restarts."""
    index = open_index(settings) if settings.uses_redis else None
    async with open_session(settings) as session:
        client = RegistryClient(session, settings.upstream, max_body=MAX_LIST_BODY)
        walker = Pruner(client, index, auth=auth, delete=delete, out=out)
        try:
            await checkpointed(walker.run(repositories, done), marks)
        finally:
            if index is not None:
                await index.close()
    mode = "" if delete else " (dry run: --delete to delete them)"
    out.write(f"prune: {walker.counts.line()}{mode}\n")
    return walker.counts
