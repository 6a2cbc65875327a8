"""Long transfers kept from starving everything else (issue 12, item 4).

Blob downloads and uploads may hold an upstream connection for minutes; manifests, referrers,
tags and the proxy's own calls need one for milliseconds. A client that opens many uploads and
trickles their bodies could otherwise hold every upstream connection. Three limits stop that:
transfers get a connection pool of their own (upstream.py), a streamed request body must keep up
a minimum rate (PacedBody), and one client may run only so many transfers at once
(ClientTransfers).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections import Counter
from collections.abc import AsyncIterator
from typing import Protocol

from proxy.oci.targets import classify


def is_transfer(method: str, path: str) -> bool:
    """Blob downloads and every upload request: those that may move a body for minutes. A blob
    HEAD or DELETE is as short as a manifest call and stays with the short requests."""
    route = classify(path).kind
    return route == "upload" or (route == "blob" and method == "GET")


class BodyTooSlow(Exception):
    """The client sent less than the minimum in a window of its own time."""


class Readable(Protocol):
    async def readany(self) -> bytes: ...


class PacedBody:
    """A request body relayed as it arrives, cut when fewer than `min_rate * window` bytes come
    in `window` seconds. Only time spent waiting for the client counts: while the upstream is
    slow to take the bytes, the client is not to blame."""

    def __init__(self, stream: Readable, min_rate: float, window: float) -> None:
        self.stream = stream
        self.window = window
        self.quota = max(1, math.ceil(min_rate * window))
        self.too_slow = False

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        waited, got = 0.0, 0
        while True:
            started = loop.time()
            try:
                async with asyncio.timeout(self.window - waited):
                    chunk = await self.stream.readany()
            except TimeoutError:
                self.too_slow = True
                raise BodyTooSlow(
                    f"fewer than {self.quota} bytes in {self.window:g} s of waiting"
                ) from None
            if not chunk:
                return
            waited += loop.time() - started
            got += len(chunk)
            if got >= self.quota:
                waited, got = 0.0, 0
            yield chunk


def client_keys(remote: str | None, authorization: str | None) -> tuple[str, ...]:
    """Who runs a transfer: its address and, when it sent one, its credential (hashed, so the
    counts never hold a secret). An anonymous client is known by its address alone."""
    keys = []
    if remote:
        keys.append(f"address:{remote}")
    if authorization:
        keys.append("credential:" + hashlib.sha256(authorization.encode()).hexdigest())
    return tuple(keys)


class ClientTransfers:
    """Transfers in flight per client key, at most `per_client` each (0: no limit). A key is
    dropped when its count returns to zero, so the state is never larger than the transfers
    running."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self.running: Counter[str] = Counter()

    def admit(self, keys: tuple[str, ...]) -> bool:
        if not self.per_client:
            return True
        if any(self.running[key] >= self.per_client for key in keys):
            return False
        self.running.update(keys)
        return True

    def release(self, keys: tuple[str, ...]) -> None:
        """Undo an `admit` that returned True."""
        if not self.per_client:
            return
        for key in keys:
            self.running[key] -= 1
            if self.running[key] <= 0:
                del self.running[key]
