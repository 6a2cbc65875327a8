"""The aiohttp application: routes, shared state, and the resources it opens and closes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.config import FallbackMode, Settings
from proxy.http.cached_manifests import CachedManifests
from proxy.http.errors import error_middleware
from proxy.http.forward import Forwarder
from proxy.http.health import Readiness
from proxy.http.manifest_writes import ManifestWrites
from proxy.http.notifications_api import NotificationsApi
from proxy.http.referrers_api import ReferrersApi
from proxy.http.request_id import echo_request_id, request_id_middleware, send_request_id
from proxy.http.routing import TARGET, repository_target, target_middleware
from proxy.http.tags_api import TagListApi
from proxy.http.transfers import ClientTransfers
from proxy.index import IndexStore, IndexUnavailable, open_index
from proxy.index.measured import MeasuredIndex
from proxy.metrics import Metrics
from proxy.oci.notifications import credentials_header
from proxy.oci.targets import MAX_TARGET
from proxy.services.cascade import Cascade
from proxy.services.event_indexer import EventIndexer
from proxy.services.keep_tags import KeepTags
from proxy.services.manifest_cache import open_manifest_cache
from proxy.services.pull_access import PullAccess
from proxy.services.tag_reader import TagIndexReader
from proxy.services.tag_writer import TagIndexWriter
from proxy.upstream.client import RegistryClient
from proxy.upstream.native import NativeSupport
from proxy.upstream.session import open_session, probe_native_referrers

log = logging.getLogger(__name__)

FORWARDER = web.AppKey("forwarder", Forwarder)
REFERRERS = web.AppKey("referrers", ReferrersApi)
WRITES = web.AppKey("manifest_writes", ManifestWrites)
TAGS = web.AppKey("tags", TagListApi)
METRICS = web.AppKey("metrics", Metrics)
READINESS = web.AppKey("readiness", Readiness)
ACCESS = web.AppKey("access", PullAccess)
MANIFESTS = web.AppKey("manifests", CachedManifests)
NOTIFICATIONS = web.AppKey("notifications", NotificationsApi)
FLUSH_SECONDS = 8.0  # for tag-schema writes still behind at shutdown


def _upstream_trace(metrics: Metrics) -> aiohttp.TraceConfig:
    """Every upstream call is timed and carries the id of the request it is made for."""
    trace = metrics.upstream_trace()
    trace.on_request_start.append(send_request_id)
    return trace


def _forgetter(app: web.Application) -> Callable[[str, str], Awaitable[None]]:
    """Drops a manifest deleted out of a client's sight from the manifest cache, if any."""

    async def forget(name: str, digest: str) -> None:
        if MANIFESTS in app:
            await app[MANIFESTS].forget(name, digest)

    return forget


def _event_indexer(
    app: web.Application,
    settings: Settings,
    client: RegistryClient,
    index: IndexStore,
    writer: TagIndexWriter | None,
    native: NativeSupport,
    metrics: Metrics,
) -> EventIndexer:
    """Registry events applied with the notifications credentials, which serve nothing else."""
    auth = None
    if settings.notifications_credentials_file is not None:
        with open(settings.notifications_credentials_file) as file:
            auth = credentials_header(file.read())

    return EventIndexer(
        client,
        index,
        writer,
        KeepTags(client, settings.keep_tags),
        native,
        metrics,
        auth=auth,
        forget=_forgetter(app),
        max_annotation_bytes=settings.max_annotation_bytes,
    )


def make_app(
    settings: Settings,
    *,
    session: aiohttp.ClientSession | None = None,
    index: IndexStore | None = None,
) -> web.Application:
    """`session` and `index` let a caller share them; otherwise the app owns its own. Only the
    app's own session is traced (upstream latency, request ids sent upstream)."""
    metrics = Metrics.create()
    app = web.Application(
        middlewares=[
            request_id_middleware,
            metrics.middleware,
            error_middleware,
            target_middleware,
        ],
        handler_args={"max_field_size": 16384, "max_line_size": 4 * MAX_TARGET},
    )
    app[METRICS] = metrics
    app.on_response_prepare.append(echo_request_id)

    async def upstream_session(app: web.Application) -> AsyncIterator[None]:
        """Two pools: blob transfers in one, everything else (the proxy's own calls too) in the
        other, so slow transfers can never hold the connections short requests need."""
        own = session is None
        client = session or open_session(
            settings, [_upstream_trace(metrics)], pool_size=settings.control_connections
        )
        transfers = session or open_session(settings, [_upstream_trace(metrics)])
        app[FORWARDER] = Forwarder(
            client,
            settings.upstream,
            metrics,
            transfer_session=transfers,
            min_body_rate=settings.min_body_rate,
            body_rate_window=settings.body_rate_window,
            clients=ClientTransfers(settings.max_transfers_per_client),
        )
        log.info("forwarding /v2/ to %s", settings.upstream)
        yield
        if own:
            await asyncio.gather(client.close(), transfers.close())

    async def referrers_index(app: web.Application) -> AsyncIterator[None]:
        own = index is None
        store = MeasuredIndex(open_index(settings) if index is None else index, metrics)
        try:
            await store.ping()
        except IndexUnavailable as exc:
            log.error(
                "referrers index unreachable at start-up (%s): attaches answer 503 and reads come"
                " from the registry's tag-schema indexes until it is back",
                exc,
            )
        forwarder = app[FORWARDER]
        client = RegistryClient(forwarder.session, forwarder.upstream, settings.max_manifest_bytes)
        reader = TagIndexReader(
            client,
            store,
            settings.fallback_tags,
            settings.fallback_refresh,
            metrics,
            max_annotation_bytes=settings.max_annotation_bytes,
        )
        writer = (
            TagIndexWriter(
                client,
                store,
                metrics,
                behind=settings.keep_tags and settings.uses_redis,
                delay=settings.tag_write_delay,
                max_bytes=settings.tag_index_max_bytes,
                max_annotation_bytes=settings.max_annotation_bytes,
            )
            if settings.fallback_tags is FallbackMode.WRITE
            else None
        )
        app[ACCESS] = PullAccess(client, settings.auth_cache_seconds, metrics)
        app[TAGS] = TagListApi(client, forwarder)
        app[READINESS] = Readiness(forwarder.session, forwarder.upstream, store, writer)
        native = NativeSupport(
            client, await probe_native_referrers(forwarder.session, settings.upstream)
        )
        app[REFERRERS] = ReferrersApi(
            forwarder,
            store,
            reader,
            app[ACCESS],
            native,
            metrics,
            max_manifest_bytes=settings.max_manifest_bytes,
            page_size=settings.referrers_page_size,
            max_annotation_bytes=settings.max_annotation_bytes,
        )
        app[WRITES] = ManifestWrites(
            forwarder,
            client,
            store,
            writer,
            KeepTags(client, settings.keep_tags),
            native,
            metrics,
            max_manifest_bytes=settings.max_manifest_bytes,
            max_annotation_bytes=settings.max_annotation_bytes,
            body_timeout=settings.read_timeout,
            cascade=(
                Cascade(client, store, reader, metrics, _forgetter(app))
                if settings.cascade_delete
                else None
            ),
        )
        indexer = None
        if settings.notifications_token is not None:
            indexer = _event_indexer(app, settings, client, store, writer, native, metrics)
            app[NOTIFICATIONS] = NotificationsApi(indexer, settings.notifications_token, metrics)
            indexer.start()
        yield
        if indexer is not None:
            await indexer.close(min(settings.shutdown_grace, FLUSH_SECONDS))
        if writer is not None:
            # After the drain: the two must fit the pod's termination grace (deploy/: 45 s,
            # preStop 5 s + --shutdown-grace 30 s + this).
            await writer.close(min(settings.shutdown_grace, FLUSH_SECONDS))
        if own:
            await store.close()

    async def manifest_cache(app: web.Application) -> AsyncIterator[None]:
        cache = open_manifest_cache(settings)
        if cache is None:
            yield
            return
        app[MANIFESTS] = CachedManifests(app[FORWARDER], app[ACCESS], cache)
        yield
        await cache.close()

    app.cleanup_ctx.extend([upstream_session, referrers_index, manifest_cache])

    async def forward(request: web.Request) -> web.StreamResponse:
        return await request.app[FORWARDER].handle(request)

    async def put_manifest(request: web.Request) -> web.StreamResponse:
        return await request.app[WRITES].put_manifest(request)

    async def get_manifest(request: web.Request) -> web.StreamResponse:
        if MANIFESTS not in request.app:
            return await forward(request)
        return await request.app[MANIFESTS].get(request)

    async def delete_manifest(request: web.Request) -> web.StreamResponse:
        try:
            return await request.app[WRITES].delete_manifest(request)
        finally:
            if MANIFESTS in request.app:
                await request.app[MANIFESTS].forget(*repository_target(request))

    async def get_referrers(request: web.Request) -> web.StreamResponse:
        return await request.app[REFERRERS].get_referrers(request)

    async def tags_list(request: web.Request) -> web.StreamResponse:
        if settings.show_fallback_tags:
            return await forward(request)
        return await request.app[TAGS].tags_list(request)

    # (kind of target, method) -> handler; every other /v2/ request goes to the registry as is.
    own: dict[tuple[str, str], Handler] = {
        ("manifest", "PUT"): put_manifest,
        ("manifest", "DELETE"): delete_manifest,
        ("manifest", "GET"): get_manifest,
        ("manifest", "HEAD"): get_manifest,
        ("referrers", "GET"): get_referrers,
        ("referrers", "HEAD"): get_referrers,
        ("tags", "GET"): tags_list,
        ("tags", "HEAD"): tags_list,
    }

    async def v2(request: web.Request) -> web.StreamResponse:
        handler = own.get((request[TARGET].kind, request.method), forward)
        return await handler(request)

    async def healthz(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    async def readyz(request: web.Request) -> web.StreamResponse:
        report = await request.app[READINESS].report()
        body = orjson.dumps({"ready": report.ready, "checks": report.checks, "notes": report.notes})
        return web.Response(
            status=200 if report.ready else 503, body=body, content_type="application/json"
        )

    async def metrics_page(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=request.app[METRICS].exposition(), headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST}
        )

    async def notifications(request: web.Request) -> web.StreamResponse:
        return await request.app[NOTIFICATIONS].post(request)

    if settings.notifications_token is not None:
        app.router.add_post("/notifications", notifications)
    # Outside /v2/, so they never shadow a registry path; no credentials asked.
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_route("*", "/v2", v2)
    app.router.add_route("*", "/v2/{tail:.*}", v2)
    return app
