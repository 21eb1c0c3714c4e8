"""Operator endpoints. With ROUTER_ADMIN_KEY set they need `Authorization: Bearer <key>`;
without it they answer loopback clients only, so a fresh install is not open to the LAN, and
refuse any request a proxy forwarded: behind a reverse proxy on the same machine every
client's connection comes from loopback."""

from __future__ import annotations

import hmac
from dataclasses import asdict

import orjson
from flask import Blueprint, Response, current_app, request

from api.blueprints import keys
from api.http import json_response
from api.services import services
from tasks.health import backend_report
from workers.errors import AuthenticationError, PermissionDeniedError

bp = Blueprint("admin", __name__, url_prefix="/admin")

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
#: Headers a proxy adds with the client it forwards for; the connection is the proxy's own.
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


@bp.before_request
def _guard() -> None:
    key = current_app.config.get("ADMIN_KEY")
    if not key:
        if request.remote_addr not in LOOPBACK:
            raise PermissionDeniedError(
                "Admin endpoints answer only local clients unless ROUTER_ADMIN_KEY is set."
            )
        if any(name in request.headers for name in PROXY_HEADERS):
            raise PermissionDeniedError(
                "Admin endpoints refuse proxied requests unless ROUTER_ADMIN_KEY is set: "
                "behind a proxy, every client looks local."
            )
        return
    given = request.headers.get("Authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), str(key).encode()):
        raise AuthenticationError("Invalid or missing admin key.", code="invalid_admin_key")


@bp.get("/models")
def models() -> Response:
    routes = services().registry.get().models(enabled_only=False)
    return json_response({"object": "list", "data": [r.as_dict() for r in routes]})


@bp.get("/backends")
def backends() -> Response:
    """Every backend with its health: circuit, live workers, queue depth, latency, errors."""
    r = services()
    infos = r.registry.get().backends()
    report = backend_report(r.health, r.liveness, ((b.name, b.queue, b.enabled) for b in infos))
    data = [{**asdict(b), **row} for b, row in zip(infos, report, strict=True)]
    return json_response({"object": "list", "data": data})


@bp.get("/workers")
def workers() -> Response:
    """Every registered worker: what it announced, `alive_until`, and `failed` (queue ->
    why its backend could not be built at start)."""
    data = [
        {**w, "failed": orjson.loads(w.get("failed") or "{}")}
        for w in services().liveness.workers()
    ]
    return json_response({"object": "list", "data": data})


bp.register_blueprint(keys.bp)  # /admin/keys, behind the guard above
