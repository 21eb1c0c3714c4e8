"""The router's services for one Flask app: Redis, job store, worker liveness and a
short-lived registry snapshot. Built by create_app, found at app.extensions["router"].
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from flask import current_app

from registry.db import init_db, make_engine
from registry.queries import ModelRoute, Snapshot, load_snapshot
from tasks.connections import redis_client
from tasks.dispatch import make_celery
from tasks.jobs import JobStore
from tasks.liveness import Liveness


class RegistryCache:
    """The registry as of at most `ttl` seconds ago: CLI changes show up without a restart,
    and the database is read once per second, not once per request."""

    def __init__(self, engine: Any, ttl: float) -> None:
        self.engine, self.ttl = engine, ttl
        self._snapshot: Snapshot | None = None
        self._loaded = 0.0
        self._lock = threading.Lock()

    def get(self) -> Snapshot:
        if self._snapshot is None or time.monotonic() - self._loaded > self.ttl:
            with self._lock:
                if self._snapshot is None or time.monotonic() - self._loaded > self.ttl:
                    self._snapshot = load_snapshot(self.engine)
                    self._loaded = time.monotonic()
        return self._snapshot


def _target(route: ModelRoute) -> tuple[str, str | None]:
    """What must be alive for a route: its queue, and for local models the model itself
    (a local worker serves only the models it loaded)."""
    return route.queue, route.upstream if route.kind == "local" else None


class LiveWorkers:
    """Whether a live worker can serve a route; a positive answer is trusted for `ttl` s."""

    def __init__(self, liveness: Liveness, ttl: float = 1.0) -> None:
        self.liveness, self.ttl = liveness, ttl
        self._seen: dict[tuple[str, str | None], float] = {}

    def any(self, route: ModelRoute) -> bool:
        target = _target(route)
        seen = self._seen.get(target)
        if seen is not None and time.monotonic() - seen < self.ttl:
            return True
        alive = self.counts([route])[route.id] > 0
        if alive:
            self._seen[target] = time.monotonic()
        else:
            self._seen.pop(target, None)
        return alive

    def any_on_queue(self, queue: str) -> bool:
        return self.liveness.live_counts([queue])[queue] > 0

    def counts(self, routes: Iterable[ModelRoute]) -> dict[str, int]:
        """Live workers per route id, in one round trip per kind of target."""
        routes = list(routes)
        queues = self.liveness.live_counts(r.queue for r in routes if r.kind != "local")
        models = self.liveness.live_model_counts(
            (r.queue, r.upstream) for r in routes if r.kind == "local"
        )
        return {
            r.id: models[(r.queue, r.upstream)] if r.kind == "local" else queues[r.queue]
            for r in routes
        }


class Router:
    """Everything a request handler needs, created once per app (per gunicorn worker)."""

    def __init__(self, config: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.config = config
        self.redis = redis_client(config["REDIS_URL"])
        self.celery = make_celery(config["REDIS_URL"])
        self.jobs = JobStore(self.redis, job_ttl=int(config["JOB_TTL"]))
        self.liveness = Liveness(self.redis)
        self.live = LiveWorkers(self.liveness)
        self.engine = make_engine(config["DATABASE_URL"])
        init_db(self.engine, env)
        self.registry = RegistryCache(self.engine, float(config["REGISTRY_TTL"]))


def router() -> Router:
    """The current app's Router."""
    found: Router = current_app.extensions["router"]
    return found
