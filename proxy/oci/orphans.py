"""Pure: which referrers hang from a missing manifest, and in which order to delete them.

A referrer is an orphan when its subject is absent, or is itself an orphan (a signature of an
SBOM of a deleted image). Deleting deepest first means a run cut short never leaves a referrer
whose subject it deleted: what is left is still a tree, found again by the next run.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


def subjects_to_check(subject_of: Mapping[str, str]) -> set[str]:
    """The subjects whose existence decides: those that are not themselves referrers found
    (a referrer read from the registry exists)."""
    return {subject for subject in subject_of.values() if subject not in subject_of}


def hanging_from(subject_of: Mapping[str, str], absent: Collection[str]) -> list[str]:
    """Referrers (digest -> subject) whose chain of subjects reaches one of `absent`, deepest
    first (ties in digest order). A chain that loops or ends at a present manifest is not."""
    depth: dict[str, int | None] = {}
    for start in subject_of:
        chain: list[str] = []
        at: str | None = start
        found: int | None = None
        while at is not None:
            if at in depth:
                known = depth[at]
                found = None if known is None else known + len(chain)
                break
            if at in chain:  # a loop: content addressing makes it impossible, but be safe
                break
            if at not in subject_of:
                found = len(chain) - 1 if at in absent and chain else None
                break
            chain.append(at)
            at = subject_of[at]
        for steps, digest in enumerate(chain):
            depth[digest] = None if found is None else found - steps
    ranked = [(d, digest) for digest, d in depth.items() if d is not None]
    return [digest for _, digest in sorted(ranked, key=lambda item: (-item[0], item[1]))]


def emptied(subject_of: Mapping[str, str], root: str, deleted: Collection[str]) -> set[str]:
    """The subjects of a tree (`root` included) none of whose referrers is left: their
    tag-schema indexes list nothing that exists any more."""
    left = {subject for digest, subject in subject_of.items() if digest not in deleted}
    return ({root} | set(subject_of.values())) - left
