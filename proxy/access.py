"""Answers the proxy builds itself go only to callers the upstream would let pull.

The check asks the upstream with the caller's own credentials (a HEAD on the subject's manifest
in that repository): 401/403 is relayed untouched, challenge included, so clients run their usual
token flow; anything else means the caller may read the repository. Yes-answers are remembered
briefly per exact credential and repository; a no is never remembered.
"""

from __future__ import annotations

import hashlib
import time

from proxy.metrics import Metrics
from proxy.registry_client import ACCEPT_MANIFESTS, Answer, RegistryClient

MAX_REMEMBERED = 100_000


def _key(auth: str | None, repository: str) -> str:
    """A hash, so the cache never holds a credential itself."""
    return hashlib.sha256(f"{auth or ''}\n{repository}".encode()).hexdigest()


class PullAccess:
    def __init__(self, client: RegistryClient, remember_seconds: float, metrics: Metrics) -> None:
        self.client = client
        self.remember_seconds = remember_seconds
        self.metrics = metrics
        self._allowed: dict[str, float] = {}

    async def refusal(self, repository: str, subject: str, auth: str | None) -> Answer | None:
        """The upstream's refusal to relay, or None when the caller may pull `repository`."""
        key = _key(auth, repository)
        now = time.monotonic()
        hit = self._allowed.get(key, 0.0) > now
        self.metrics.cache_lookup("auth", hit)
        if hit:
            return None
        answer = await self.client.call(
            "HEAD",
            f"/v2/{repository}/manifests/{subject}",
            auth=auth,
            headers={"Accept": ACCEPT_MANIFESTS},
        )
        if answer.status in (401, 403):
            self._allowed.pop(key, None)
            return answer
        if self.remember_seconds > 0:
            if len(self._allowed) >= MAX_REMEMBERED:
                self._allowed = {k: t for k, t in self._allowed.items() if t > now}
            self._allowed[key] = now + self.remember_seconds
        return None
