"""A token service for Distribution's `auth: token`, as Docker Hub or Harbor run one: it checks
a user's Basic credentials and issues a signed JWT granting the scopes its policy allows."""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

Policy = dict[str, dict[str, set[str]]]  # user -> repository -> allowed actions


@dataclass
class TokenService:
    key: Path
    cert: Path
    service: str
    issuer: str
    passwords: dict[str, str]
    policy: Policy

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self.token)
        return app

    def _user(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        if self.passwords.get(user) != password:
            raise web.HTTPUnauthorized(text="bad credentials")
        return user

    async def token(self, request: web.Request) -> web.Response:
        user = self._user(request)
        granted = []
        for scope in request.query.getall("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            allowed = self.policy.get(user or "", {}).get(name, set())
            wanted = [a for a in actions.split(",") if a in allowed]
            if kind == "repository" and wanted:
                granted.append({"type": "repository", "name": name, "actions": wanted})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": request.query.get("service", self.service),
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": granted,
        }
        certificate = x509.load_pem_x509_certificate(self.cert.read_bytes())
        der = certificate.public_bytes(serialization.Encoding.DER)
        token = jwt.encode(
            claims,
            self.key.read_bytes(),
            algorithm="ES256",
            headers={"x5c": [base64.b64encode(der).decode()]},
        )
        return web.json_response({"token": token, "access_token": token, "expires_in": 300})
