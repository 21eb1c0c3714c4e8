"""Liveness and readiness probes."""

from __future__ import annotations

import redis
from flask import Blueprint, Response
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.http import json_response
from api.services import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process answers."""
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Redis and the registry database answer. Live workers are reported, not required:
    with queues scaled to zero (KEDA) the API must still accept jobs."""
    checks: dict[str, object] = {}
    ok = True
    try:
        services().redis.ping()
        checks["redis"] = "ok"
    except redis.RedisError as exc:
        ok, checks["redis"] = False, f"error: {exc.__class__.__name__}"
    try:
        with services().engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except SQLAlchemyError as exc:
        ok, checks["database"] = False, f"error: {exc.__class__.__name__}"
    if checks["redis"] == "ok":
        queues = {r.primary.queue for r in services().registry.get().models()}
        checks["workers"] = services().liveness.live_counts(sorted(queues))
    return json_response({"status": "ok" if ok else "unavailable", **checks}, 200 if ok else 503)
