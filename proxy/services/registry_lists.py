"""The registry's lists that the offline commands (reindex, prune, legacy-artifacts) walk: its
catalog and each repository's tags, read the same way by each."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import aiohttp

from proxy.oci.errors import BodyTooLarge, UpstreamRefused
from proxy.oci.names import is_repository_name, is_tag
from proxy.upstream.client import RegistryClient

log = logging.getLogger(__name__)
CATALOG = "/v2/_catalog?n=1000"
# A read the walk cannot use: refused, over the size bound, cut or timed out.
READ_FAILURES = (UpstreamRefused, BodyTooLarge, aiohttp.ClientError, TimeoutError)


class WalkRefused(Exception):
    """The run cannot start: the registry refused its catalog (or a command its own check)."""


@dataclass
class Repository:
    """One repository of a walk: where it stands in the run and what was read of it."""

    name: str
    position: int
    total: int
    seen: set[str] = field(default_factory=set)
    kept: set[str] = field(default_factory=set)  # referrer digests that have a keep tag


async def repositories(client: RegistryClient, named: list[str], auth: str | None) -> list[str]:
    """The repositories named, else every one in the registry's catalog: each a valid name,
    since it goes into the paths the walk asks for."""
    if named:
        wrong = [name for name in named if not is_repository_name(name)]
        if wrong:
            raise WalkRefused(f"not a repository name: {wrong[0]!r}")
        return named
    try:
        listed = [name async for name in client.listed(CATALOG, "repositories", auth)]
    except READ_FAILURES as exc:
        raise WalkRefused(f"the catalog could not be read: {type(exc).__name__}: {exc}") from exc
    valid = [name for name in dict.fromkeys(listed) if is_repository_name(name)]
    for name in set(listed).difference(valid):
        log.warning("the catalog lists %r, which is no repository name: skipped", name)
    return valid


async def tags(client: RegistryClient, repository: str, auth: str | None) -> tuple[list[str], bool]:
    """A repository's valid tags (each goes into a path), and whether that is all of them: a
    refused page ends the list and a name that is no tag is skipped (each logged), and what
    depends on the whole list (which tags a delete by digest takes) must know."""
    found: dict[str, None] = {}  # a registry repeating a name across pages reads it once
    complete = True
    try:
        async for tag in client.listed(f"/v2/{repository}/tags/list", "tags", auth):
            if is_tag(tag):
                found[tag] = None
            else:
                log.warning("%s lists the tag %r, which is no tag name: skipped", repository, tag)
                complete = False
    except READ_FAILURES as exc:
        log.warning("%s: tag list not read in full: %s: %s", repository, type(exc).__name__, exc)
        return list(found), False
    return list(found), complete
