"""Answers the proxy builds itself go only to callers the upstream proves may pull.

Default-deny: the check asks the upstream, with the caller's own credentials, for the subject's
manifest in that repository (`HEAD`, then `GET` to read the reason of a 404), and only two
answers grant:

- `200`: the caller may pull the repository;
- `404` whose body is an OCI error `MANIFEST_UNKNOWN`: Distribution authenticates and authorizes
  before its manifest handler looks anything up (measured on 2.8: an anonymous `GET` against an
  htpasswd registry is 401 whatever the digest), so this 404 was routed and allowed.

A `NAME_UNKNOWN` 404 grants nothing but shows nothing either: the repository does not exist for
this caller, and the answer is an empty list. `401`/`403` are relayed untouched (challenge
included) so clients run their token flow; `429` becomes 429 with `Retry-After`; anything else —
Distribution's router 404 for an unknown route, 5xx, a redirect, a timeout, a reset — is 503.
Only a grant is remembered, for `remember_seconds`, keyed by a hash of the exact credential and
the repository; the path asked is built from the validated name and digest only.
"""

from __future__ import annotations

import hashlib
import logging
import re

import aiohttp
import orjson
from aiohttp import hdrs
from cachetools import TTLCache
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.metrics import Metrics
from proxy.oci.errors import BodyTooLarge, OCIError, error_body
from proxy.upstream.client import ACCEPT_MANIFESTS, Answer, RegistryClient

log = logging.getLogger(__name__)
MAX_REMEMBERED = 100_000
_MAX_RETRY_AFTER = 300  # seconds; an upstream's longer hint is capped, a missing one is 1
_SECONDS = re.compile(r"[0-9]{1,6}")


class PullRefused(Exception):
    """The upstream refused the caller (401/403): its answer, challenge included, is what the
    client gets; the body of a HEAD's answer (none) becomes an OCI error body."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        if not answer.body:
            code = "UNAUTHORIZED" if answer.status == 401 else "DENIED"
            headers = CIMultiDict(answer.headers)
            headers[hdrs.CONTENT_TYPE] = "application/json"
            body = error_body(code, "the registry refused this caller")
            answer = Answer(answer.status, CIMultiDictProxy(headers), body)
        self.answer = answer


def _key(auth: str | None, repository: str) -> str:
    """A hash, so the cache never holds a credential itself."""
    return hashlib.sha256(f"{auth or ''}\n{repository}".encode()).hexdigest()


def error_codes(body: bytes) -> set[str]:
    """The codes of an OCI error body; empty for anything else (Distribution's router 404 is
    `text/plain` "404 page not found")."""
    try:
        errors = orjson.loads(body)["errors"]
        return {str(error["code"]) for error in errors if isinstance(error, dict)}
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return set()


def proves_absent(answer: Answer) -> bool:
    """A 404 that the registry's manifest handler gave, after authorizing the caller: not the
    router's (or an ingress's) 404, which says nothing about the manifest or the caller."""
    return answer.status == 404 and "MANIFEST_UNKNOWN" in error_codes(answer.body)


def retry_after(answer: Answer) -> str:
    value = answer.headers.get(hdrs.RETRY_AFTER, "")
    if not _SECONDS.fullmatch(value):
        return "1"
    return str(min(int(value), _MAX_RETRY_AFTER))


class PullAccess:
    def __init__(self, client: RegistryClient, remember_seconds: float, metrics: Metrics) -> None:
        self.client = client
        self.metrics = metrics
        self._allowed: TTLCache[str, bool] | None = (
            TTLCache(MAX_REMEMBERED, remember_seconds) if remember_seconds > 0 else None
        )

    def known(self, repository: str, auth: str | None) -> bool:
        """Whether a grant for this credential and repository is remembered; asks nobody."""
        return self._allowed is not None and _key(auth, repository) in self._allowed

    def remember(self, repository: str, auth: str | None) -> None:
        """Record a grant proven elsewhere: the upstream answered this caller's own manifest
        `GET` in `repository` with 200, the same proof as a check's."""
        if self._allowed is not None:
            self._allowed[_key(auth, repository)] = True

    async def may_pull(self, repository: str, subject: str, auth: str | None) -> bool:
        """True when the caller may pull `repository`; False when the repository does not exist
        for the caller (nothing to list). Raises PullRefused to relay a 401/403, and OCIError
        429/503 when the upstream did not prove either way."""
        key = _key(auth, repository)
        hit = self._allowed is not None and key in self._allowed
        self.metrics.cache_lookup("auth", hit)
        if hit:
            return True
        path = f"/v2/{repository}/manifests/{subject}"
        headers: dict[str, str] = {hdrs.ACCEPT: ACCEPT_MANIFESTS}
        try:
            answer = await self.client.call("HEAD", path, auth=auth, headers=headers)
            if answer.status == 404:
                answer = await self.client.call("GET", path, auth=auth, headers=headers)
        except (aiohttp.ClientError, TimeoutError, BodyTooLarge) as exc:
            log.warning("pull check %s: no usable answer (%r): refused", repository, exc)
            self.metrics.pull_check("unavailable")
            raise _unproven(repository, "the registry did not answer") from exc
        return self._judge(repository, key, answer)

    def _judge(self, repository: str, key: str, answer: Answer) -> bool:
        status = answer.status
        codes = error_codes(answer.body) if status == 404 else set()
        if status == 200 or proves_absent(answer):
            self.metrics.pull_check("allowed")
            if self._allowed is not None:
                self._allowed[key] = True
            return True
        if "NAME_UNKNOWN" in codes:
            self.metrics.pull_check("unknown_repository")
            return False
        if status in (401, 403):
            self.metrics.pull_check("refused")
            raise PullRefused(answer)
        if status == 429:
            self.metrics.pull_check("rate_limited")
            log.info("pull check %s: upstream rate-limited the caller", repository)
            raise OCIError(
                429,
                "TOOMANYREQUESTS",
                "registry rate limit while checking pull permission",
                headers={hdrs.RETRY_AFTER: retry_after(answer)},
            )
        self.metrics.pull_check("unavailable")
        log.warning(
            "pull check %s: upstream answered %d %s, which proves nothing: refused",
            repository,
            status,
            sorted(codes) if codes else "",
        )
        raise _unproven(repository, f"the registry answered {status}", retry_after(answer))


def _unproven(repository: str, why: str, retry: str = "1") -> OCIError:
    return OCIError(
        503,
        "UNAVAILABLE",
        f"pull permission for {repository} could not be confirmed ({why}); retry",
        headers={hdrs.RETRY_AFTER: retry},
    )
