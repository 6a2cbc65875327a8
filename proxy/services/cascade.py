"""`--cascade-delete`: deleting a subject by digest through the proxy deletes its referrers in
that repository too, recursively (a signature of an SBOM of the image), with the caller's own
credentials.

Order: the tree is read first (the index, each subject's tag-schema index merged in), then its
referrers are deleted deepest first, then the subject itself (the client's own request), then
the tag-schema indexes of every subject that went. A cut-short cascade therefore never leaves a
referrer whose subject it deleted. A referrer the registry refuses to delete is reported (log,
metrics, the answer's CASCADE_HEADER) and the rest go on, the subject included: it becomes an
orphan that `referrers-proxy prune` deletes, or that repeating the same DELETE retries (the
index still lists it). A 401 stops the cascade: those credentials will delete nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import hdrs

from proxy.index import IndexStore
from proxy.metrics import Metrics
from proxy.oci.manifest import IMAGE_INDEX, ManifestInvalid, inspect_manifest, media_type
from proxy.oci.orphans import emptied, hanging_from
from proxy.oci.tagschema import tag_names
from proxy.services.pull_access import proves_absent
from proxy.services.tag_reader import TagIndexReader
from proxy.upstream.client import RegistryClient

log = logging.getLogger(__name__)
CASCADE_HEADER = "Referrers-Proxy-Cascade"
MAX_REFERRERS = 1000  # per cascade; more are left for a repeated DELETE
MAX_DEPTH = 8
_PAGE = 100

Forget = Callable[[str, str], Awaitable[None]]


@dataclass
class Outcome:
    deleted: list[str] = field(default_factory=list)
    failed: list[tuple[str, int]] = field(default_factory=list)  # digest, registry's status
    truncated: bool = False
    # Subjects whose tag-schema index lists nothing left, or that are deleted themselves.
    emptied: set[str] = field(default_factory=set)

    def header(self) -> str:
        text = f"deleted={len(self.deleted)}, failed={len(self.failed)}"
        return text + (", truncated" if self.truncated else "")


class Cascade:
    def __init__(
        self,
        client: RegistryClient,
        index: IndexStore,
        reader: TagIndexReader,
        metrics: Metrics,
        forget: Forget,
    ) -> None:
        self.client = client
        self.index = index
        self.reader = reader
        self.metrics = metrics
        self.forget = forget

    async def referrers(
        self, name: str, root: str, auth: str | None
    ) -> tuple[dict[str, str], bool]:
        """The tree under `root`: referrer digest -> its subject, and whether a bound cut it."""
        subject_of: dict[str, str] = {}
        frontier = [root]
        for _ in range(MAX_DEPTH):
            next_frontier = []
            for subject in frontier:
                for digest in await self._listed(name, subject, auth):
                    if digest in subject_of or digest == root:
                        continue
                    if len(subject_of) == MAX_REFERRERS:
                        return subject_of, True
                    subject_of[digest] = subject
                    next_frontier.append(digest)
            if not next_frontier:
                return subject_of, False
            frontier = next_frontier
        return subject_of, True

    async def _listed(self, name: str, subject: str, auth: str | None) -> list[str]:
        await self.reader.refresh(name, subject, auth, fresh=True)
        digests, after = [], 0
        while True:
            page = await self.index.page(name, subject, (), after, _PAGE)
            digests += [orjson.loads(descriptor)["digest"] for descriptor in page.descriptors]
            if page.next_after is None:
                return digests
            after = page.next_after

    async def delete_referrers(self, name: str, root: str, auth: str | None) -> Outcome:
        """Every referrer under `root`, deepest first; the subject is the caller's to delete."""
        subject_of, truncated = await self.referrers(name, root, auth)
        outcome = Outcome(truncated=truncated)
        for digest in hanging_from(subject_of, {root}):
            if not await self._refers_to(name, digest, subject_of[digest], auth):
                continue
            answer = await self.client.delete_manifest(name, digest, auth)
            if answer.status == 202 or proves_absent(answer):
                await self.index.remove(name, digest)
                await self.forget(name, digest)
                outcome.deleted.append(digest)
                continue
            outcome.failed.append((digest, answer.status))
            if answer.status == 401:
                break
        deleted = set(outcome.deleted)
        outcome.emptied = emptied(subject_of, root, deleted) | (deleted & set(subject_of.values()))
        self.metrics.cascaded("deleted", len(outcome.deleted))
        self.metrics.cascaded("failed", len(outcome.failed))
        if outcome.truncated:
            log.warning(
                "%s %s: cascade cut at %d referrers or depth %d; repeat the DELETE",
                name,
                root,
                MAX_REFERRERS,
                MAX_DEPTH,
            )
        return outcome

    async def _refers_to(self, name: str, digest: str, parent: str, auth: str | None) -> bool:
        """Whether the registry's manifest `digest` really names `parent` as its subject: a
        tag-schema index anyone may write could list an unrelated image."""
        answer = await self.client.get_manifest(name, digest, auth)
        if proves_absent(answer):
            return True  # already gone: its delete is a no-op, recorded as deleted
        try:
            found = (
                inspect_manifest(answer.body, answer.headers.get(hdrs.CONTENT_TYPE, ""))
                if answer.status == 200
                else None
            )
        except ManifestInvalid:
            found = None
        if found is None or found.subject != parent:
            log.warning(
                "%s: %s is listed under %s but is no referrer of it: kept", name, digest, parent
            )
            return False
        return True

    async def drop_tag_indexes(self, name: str, subjects: set[str], auth: str | None) -> None:
        """The tag-schema indexes of subjects that are gone (deleted by digest: Distribution's
        only way). What a tag holds is checked first: it must be an index, not the subject."""
        for subject in sorted(subjects):
            for tag in tag_names(subject):
                answer = await self.client.get_manifest(name, tag, auth)
                if answer.status != 200 or answer.content_digest == subject:
                    continue
                if media_type(answer.headers.get(hdrs.CONTENT_TYPE, "")) != IMAGE_INDEX:
                    continue
                dropped = await self.client.delete_manifest(name, answer.content_digest, auth)
                if dropped.status != 202 and not proves_absent(dropped):
                    log.error(
                        "%s: tag-schema index %s of deleted %s not deleted (%d)",
                        name,
                        tag,
                        subject,
                        dropped.status,
                    )

    def report(self, name: str, root: str, outcome: Outcome, subject_status: int) -> None:
        failed = ", ".join(f"{digest} ({status})" for digest, status in outcome.failed)
        log.log(
            logging.WARNING if outcome.failed else logging.INFO,
            "cascade delete of %s in %s (registry answered %d): deleted %d referrers %s;"
            " refused %d%s",
            root,
            name,
            subject_status,
            len(outcome.deleted),
            outcome.deleted,
            len(outcome.failed),
            f": {failed} (left for `referrers-proxy prune`)" if failed else "",
        )
