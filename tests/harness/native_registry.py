"""A stand-in for an OCI 1.1 registry (one with the Referrers API), on everything the proxy
touches: manifests by tag and by digest, tag lists, deletes, and the referrers it records itself.

No OCI 1.1 registry can be installed on these machines (Debian ships Distribution 2.8), so this
plays the upgraded upstream; everything else in the suite runs against the real one. Before its
`native` switch is set it behaves like 2.8 (no `OCI-Subject`, a router's 404 on /referrers, no
record of referrers), so a test can upgrade it under a proxy. Like most real registries it
challenges anonymous callers everywhere but /v2/ (so the start-up probe cannot tell), and like
Distribution it authenticates before it looks anything up. Every write it receives is logged in
`writes`, so a test can prove the proxy sent none of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

INDEX = "application/vnd.oci.image.index.v1+json"
TOKEN = "Bearer ok"
AUTH = {"Authorization": TOKEN}
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="https://auth.example/token",service="x"'}
_ROUTER_404 = "404 page not found"


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"errors": [{"code": code, "message": message}]}
    return web.json_response(body, status=status)


@dataclass
class Repository:
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # digest: body, type
    tags: dict[str, str] = field(default_factory=dict)  # tag: digest
    referrers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # subject: listed


@dataclass
class NativeRegistry:
    native: bool = False
    page_size: int = 100  # referrers per page; a smaller one makes it page with Link
    repositories: dict[str, Repository] = field(default_factory=dict)
    writes: list[tuple[str, str]] = field(default_factory=list)  # (method, path), in order
    referrers_queries: int = 0  # asked or not
    credentials: tuple[str, ...] = (TOKEN,)  # the Authorization values it accepts

    def writes_to(self, name: str) -> list[tuple[str, str]]:
        prefix = f"/v2/{name}/"
        return [(method, path) for method, path in self.writes if path.startswith(prefix)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            self.writes.append((request.method, request.path))
        if request.path in ("/v2/", "/v2"):
            return web.json_response({})
        if "/referrers/" in request.path:
            self.referrers_queries += 1
        if request.headers.get("Authorization") not in self.credentials:
            return web.Response(status=401, headers=CHALLENGE)
        head, sep, tail = request.path.removeprefix("/v2/").rpartition("/")
        name, _, kind = head.rpartition("/")
        if not sep or not name:
            return web.Response(status=404, text=_ROUTER_404)
        if kind == "manifests":
            return await self._manifest(request, name, tail)
        if kind == "referrers" and request.method == "GET":
            return self._referrers(request, name, tail)
        if f"{kind}/{tail}" == "tags/list" and request.method == "GET":
            tags = sorted(self.repositories.get(name, Repository()).tags)
            return web.json_response({"name": name, "tags": tags})
        return web.Response(status=404, text=_ROUTER_404)

    async def _manifest(self, request: web.Request, name: str, reference: str) -> web.Response:
        repo = self.repositories.get(name)
        if request.method == "PUT":
            return self._put(
                name,
                self.repositories.setdefault(name, Repository()),
                reference,
                await request.read(),
                request.content_type,
            )
        is_digest = reference.startswith("sha256:")
        digest = reference if is_digest else (repo.tags.get(reference) if repo else None)
        if repo is None or digest is None or digest not in repo.manifests:
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        if request.method == "DELETE":
            if not is_digest:  # OCI 1.1: a tag is deleted alone
                del repo.tags[reference]
                return web.Response(status=202)
            del repo.manifests[digest]
            repo.tags = {tag: d for tag, d in repo.tags.items() if d != digest}
            for listed in repo.referrers.values():
                listed[:] = [d for d in listed if d["digest"] != digest]
            return web.Response(status=202)
        body, media_type = repo.manifests[digest]
        headers = {"Docker-Content-Digest": digest, "Content-Type": media_type}
        return web.Response(body=body, headers=headers)

    def _put(
        self, name: str, repo: Repository, reference: str, body: bytes, media_type: str
    ) -> web.Response:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and reference != digest:
            return _error(400, "DIGEST_INVALID", "digest does not match")
        document = orjson.loads(body)
        repo.manifests[digest] = (body, media_type)
        if not reference.startswith("sha256:"):
            repo.tags[reference] = digest
        headers = {"Docker-Content-Digest": digest, "Location": f"/v2/{name}/manifests/{digest}"}
        subject = document.get("subject", {}).get("digest")
        if self.native and subject:
            headers["OCI-Subject"] = subject
            listed = repo.referrers.setdefault(subject, [])
            if all(d["digest"] != digest for d in listed):
                config = document.get("config", {}).get("mediaType")
                entry = {"mediaType": media_type, "digest": digest, "size": len(body)}
                artifact_type = document.get("artifactType") or config
                if artifact_type:
                    entry["artifactType"] = artifact_type
                if document.get("annotations"):
                    entry["annotations"] = document["annotations"]
                listed.append(entry)
        return web.Response(status=201, headers=headers)

    def _referrers(self, request: web.Request, name: str, subject: str) -> web.Response:
        if not self.native:
            return web.Response(status=404, text=_ROUTER_404)
        repo = self.repositories.get(name, Repository())
        listed = repo.referrers.get(subject, [])
        wanted = request.query.getall("artifactType", [])
        headers = {"Content-Type": INDEX}
        if wanted:
            listed = [d for d in listed if d.get("artifactType") in wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        start = int(request.query.get("page", "0"))
        page = listed[start : start + self.page_size]
        if start + self.page_size < len(listed):
            query = "".join(f"artifactType={t}&" for t in wanted)
            nxt = f"/v2/{name}/referrers/{subject}?{query}page={start + self.page_size}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        body = orjson.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": page})
        return web.Response(body=body, headers=headers)


@asynccontextmanager
async def running_native_registry(
    registry: NativeRegistry | None = None,
) -> AsyncIterator[tuple[NativeRegistry, str]]:
    """The stand-in served on a free local port: itself and its base URL."""
    registry = registry or NativeRegistry()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", registry.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield registry, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
