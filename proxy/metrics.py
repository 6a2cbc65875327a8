"""Prometheus metrics, one registry per application so that several apps in one process (and
tests) never share counters. Every label comes from a small fixed set: a route class, never a
path or a repository name, so the number of series stays bounded whatever clients send."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from types import SimpleNamespace

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from proxy.oci.targets import classify

NAMESPACE = "referrers_proxy"
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"})
# Exception class names worth telling apart in index errors; any other is "other".
INDEX_ERRORS = frozenset(
    {
        "IndexUnavailable",
        "ConnectionError",
        "TimeoutError",
        "AuthenticationError",
        "BusyLoadingError",
        "ReadOnlyError",
        "OutOfMemoryError",
        "ResponseError",
        "LockError",
        "MaxConnectionsError",
    }
)
TO_UPSTREAM, FROM_UPSTREAM = "to_upstream", "from_upstream"
# A request body below --min-body-rate; a client over --max-transfers-per-client.
TRANSFER_REFUSALS = ("too_slow", "client_limit")
TAG_WRITE_RESULTS = ("written", "unchanged", "retried", "refused", "abandoned")
# The manifest cache: answered from it, not there, caller's permission not yet proven (the cache
# is not consulted), storage unavailable.
MANIFEST_CACHE_RESULTS = ("hit", "miss", "unproven", "unavailable")
# Registry notifications: envelopes answered, events applied.
NOTIFICATION_ANSWERS = ("accepted", "unauthorized", "invalid", "full")
NOTIFICATION_RESULTS = ("indexed", "forgotten", "ignored", "failed")
# Blob transfers take minutes; metadata calls milliseconds.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def error_label(exc: BaseException) -> str:
    """The class name of what really failed: an IndexUnavailable's cause when it has one."""
    name = type(exc.__cause__ or exc).__name__
    return name if name in INDEX_ERRORS else "other"


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    request_seconds: Histogram
    upstream_seconds: Histogram
    streamed_bytes: Counter
    index_operations: Counter
    index_errors: Counter
    referrers_responses: Counter
    referrers_descriptors: Counter
    cache_lookups: Counter
    pull_checks: Counter
    descriptors_trimmed: Counter
    transfers_refused: Counter
    tag_writes: Counter
    tag_writes_pending: Gauge
    tag_writes_failing: Gauge
    tag_index_left_out: Counter
    notifications: Counter
    notification_events: Counter
    notification_lag: Histogram
    notifications_queued: Gauge
    cascade_deletes: Counter

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, namespace=NAMESPACE, registry=registry)

        def histogram(name: str, doc: str, labels: tuple[str, ...]) -> Histogram:
            return Histogram(
                name,
                doc,
                labels,
                namespace=NAMESPACE,
                registry=registry,
                buckets=SECONDS_BUCKETS,
            )

        metrics = cls(
            registry=registry,
            requests=counter(
                "requests",
                "Requests answered, by method, route class and status",
                ("method", "route", "status"),
            ),
            request_seconds=histogram(
                "request_duration_seconds", "Time to handle a request, by route class", ("route",)
            ),
            upstream_seconds=histogram(
                "upstream_response_seconds",
                "Time until the upstream's response headers, by route class",
                ("route",),
            ),
            streamed_bytes=counter(
                "streamed_bytes",
                "Body bytes passed between clients and the upstream, by direction and route class",
                ("direction", "route"),
            ),
            index_operations=counter(
                "index_operations", "Referrers index operations, by operation", ("operation",)
            ),
            index_errors=counter(
                "index_errors",
                "Failed referrers index operations, by operation and error class",
                ("operation", "error"),
            ),
            referrers_responses=counter(
                "referrers_responses",
                "Referrers answers served, by where they came from",
                ("source",),
            ),
            referrers_descriptors=counter(
                "referrers_descriptors",
                "Descriptors listed in referrers answers, by where they came from",
                ("source",),
            ),
            cache_lookups=counter(
                "cache_lookups",
                "Cache lookups: auth (pull permission), tag_schema (revalidation) and manifest"
                " (by-digest manifests), by result",
                ("cache", "result"),
            ),
            pull_checks=counter(
                "pull_checks",
                "Pull-permission checks asked of the upstream, by outcome",
                ("result",),
            ),
            descriptors_trimmed=counter(
                "descriptors_trimmed",
                "Descriptors whose annotations were over --max-annotation-bytes and left out,"
                " by where they came from (put, tag_schema, stored)",
                ("source",),
            ),
            transfers_refused=counter(
                "transfers_refused",
                "Requests refused or cut so that one client cannot hold the upstream, by reason",
                ("reason",),
            ),
            tag_writes=counter(
                "tag_writes",
                "Tag-schema index writes, by result (written, unchanged, retried, refused,"
                " abandoned)",
                ("result",),
            ),
            tag_writes_pending=Gauge(
                "tag_writes_pending",
                "Subjects whose tag-schema index waits to be written behind",
                namespace=NAMESPACE,
                registry=registry,
            ),
            tag_writes_failing=Gauge(
                "tag_writes_failing",
                "Subjects whose last tag-schema write failed and is being retried",
                namespace=NAMESPACE,
                registry=registry,
            ),
            tag_index_left_out=counter(
                "tag_index_left_out",
                "Referrers left out of a written tag-schema index for lack of room under"
                " --tag-index-max-bytes (listed by the proxy all the same)",
                (),
            ),
            notifications=counter(
                "notifications",
                "Registry notification envelopes, by answer (accepted, unauthorized, invalid,"
                " full)",
                ("answer",),
            ),
            notification_events=counter(
                "notification_events",
                "Registry events applied, by result (indexed, forgotten, ignored, failed)",
                ("result",),
            ),
            notification_lag=histogram(
                "notification_lag_seconds",
                "Time from a registry event's arrival to its application",
                (),
            ),
            notifications_queued=Gauge(
                "notifications_queued",
                "Registry events waiting to be applied",
                namespace=NAMESPACE,
                registry=registry,
            ),
            cascade_deletes=counter(
                "cascade_deletes",
                "Referrers deleted with their subject (--cascade-delete), by result (deleted,"
                " failed)",
                ("result",),
            ),
        )
        for result in ("deleted", "failed"):
            metrics.cascade_deletes.labels(result)
        for answer in NOTIFICATION_ANSWERS:
            metrics.notifications.labels(answer)
        for result in NOTIFICATION_RESULTS:
            metrics.notification_events.labels(result)
        for result in TAG_WRITE_RESULTS:
            metrics.tag_writes.labels(result)
        for reason in TRANSFER_REFUSALS:
            metrics.transfers_refused.labels(reason)
        for cache in ("auth", "tag_schema"):
            for result in ("hit", "miss"):
                metrics.cache_lookups.labels(cache, result)
        for result in MANIFEST_CACHE_RESULTS:
            metrics.cache_lookups.labels("manifest", result)
        return metrics

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def identify_worker(self, worker: int) -> None:
        """With --workers each process counts on its own and a scrape reaches whichever took the
        connection: this series says which one answered."""
        Gauge(
            "worker_info",
            "The worker (1..N, and its pid) whose counters this page shows",
            ("worker", "pid"),
            namespace=NAMESPACE,
            registry=self.registry,
        ).labels(str(worker), str(os.getpid())).set(1)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Outside the error middleware, so it sees the status the client got; "aborted" when
        the connection was cut instead (an upstream failing mid-body, a client gone)."""
        route = classify(request.path).kind
        started = time.perf_counter()
        status = "aborted"
        try:
            response = await handler(request)
            status = str(response.status)
            return response
        except web.HTTPException as exc:
            status = str(exc.status)
            raise
        finally:
            self.requests.labels(method_label(request.method), route, status).inc()
            self.request_seconds.labels(route).observe(time.perf_counter() - started)

    def upstream_trace(self) -> aiohttp.TraceConfig:
        """Times every upstream call, the proxy's own included, up to its response headers."""

        async def start(
            session: aiohttp.ClientSession,
            context: SimpleNamespace,
            params: aiohttp.TraceRequestStartParams,
        ) -> None:
            context.started = time.perf_counter()

        async def end(
            session: aiohttp.ClientSession,
            context: SimpleNamespace,
            params: aiohttp.TraceRequestEndParams,
        ) -> None:
            route = classify(params.url.raw_path).kind
            self.upstream_seconds.labels(route).observe(time.perf_counter() - context.started)

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(start)
        trace.on_request_end.append(end)
        return trace

    def streamed(self, path: str, direction: str, count: int) -> None:
        """Called once per body with a count kept locally, never per chunk."""
        self.streamed_bytes.labels(direction, classify(path).kind).inc(count)

    def served(self, source: str, descriptors: int) -> None:
        self.referrers_responses.labels(source).inc()
        self.referrers_descriptors.labels(source).inc(descriptors)

    def cache_lookup(self, cache: str, hit: bool) -> None:
        self.cache_lookups.labels(cache, "hit" if hit else "miss").inc()

    def manifest_cache(self, result: str) -> None:
        """One of MANIFEST_CACHE_RESULTS."""
        self.cache_lookups.labels("manifest", result).inc()

    def trimmed(self, source: str) -> None:
        self.descriptors_trimmed.labels(source).inc()

    def pull_check(self, result: str) -> None:
        """`allowed`, `unknown_repository`, `refused`, `rate_limited` or `unavailable`."""
        self.pull_checks.labels(result).inc()

    def tag_write(self, result: str) -> None:
        """One of TAG_WRITE_RESULTS."""
        self.tag_writes.labels(result).inc()

    def notification(self, answer: str) -> None:
        """One of NOTIFICATION_ANSWERS."""
        self.notifications.labels(answer).inc()

    def notification_applied(self, result: str, lag: float) -> None:
        """One of NOTIFICATION_RESULTS, `lag` seconds after the event arrived."""
        self.notification_events.labels(result).inc()
        self.notification_lag.observe(lag)

    def cascaded(self, result: str, count: int) -> None:
        """`deleted` or `failed`: referrers of one cascade delete."""
        self.cascade_deletes.labels(result).inc(count)

    def transfer_refused(self, reason: str) -> None:
        """One of TRANSFER_REFUSALS."""
        self.transfers_refused.labels(reason).inc()
