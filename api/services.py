"""The router's services for one Flask app: Redis, job store, worker liveness and a
short-lived registry snapshot. Built by create_app, found at app.extensions["router"].
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from flask import current_app

from api.load import LoadView
from api.presence import Presence
from api.routing import ANNOUNCING_KINDS, Picker
from registry.db import init_db, make_engine
from registry.queries import BackendInfo, ModelRoute, Snapshot, load_snapshot
from tasks.connections import redis_client
from tasks.health import BackendHealth, BreakerPolicy
from tasks.jobs import JobStore
from tasks.liveness import Liveness

#: Kinds whose announced models join the registry without being added by hand.
DISCOVERING_KINDS = frozenset({"llm-d"})

DISCOVERED_CONTEXT = 32768  # context window of a discovered model that reports none


class RegistryCache:
    """The registry as of at most `ttl` seconds ago: CLI changes show up without a restart,
    and the database is read once per second, not once per request. Models that live
    llm-d workers discovered on their cluster are added to each snapshot."""

    def __init__(self, engine: Any, ttl: float, liveness: Liveness | None = None) -> None:
        self.engine, self.ttl, self.liveness = engine, ttl, liveness
        self._snapshot: Snapshot | None = None
        self._loaded = 0.0
        self._lock = threading.Lock()

    def get(self) -> Snapshot:
        if self._snapshot is None or time.monotonic() - self._loaded > self.ttl:
            with self._lock:
                if self._snapshot is None or time.monotonic() - self._loaded > self.ttl:
                    snapshot = load_snapshot(self.engine)
                    self._snapshot = snapshot.with_routes(self._discovered(snapshot))
                    self._loaded = time.monotonic()
        return self._snapshot

    def _discovered(self, snapshot: Snapshot) -> list[ModelRoute]:
        if self.liveness is None:
            return []
        routes = []
        for backend in snapshot.backends():
            if backend.kind in DISCOVERING_KINDS and backend.enabled:
                announced = self.liveness.announced(backend.queue)
                routes += [discovered_route(backend, m, w) for m, w in announced.items()]
        return routes


def discovered_route(backend: BackendInfo, model: str, worker: Mapping[str, str]) -> ModelRoute:
    """A route for a model a cluster serves but the registry does not list; its context
    window is the cluster's `max_model_len` when the worker reported one."""
    try:
        lengths = orjson.loads(worker.get("llmd_models") or "{}")
    except orjson.JSONDecodeError:
        lengths = {}
    context = int(lengths.get(model) or DISCOVERED_CONTEXT)
    return ModelRoute(
        id=model,
        backend=backend.name,
        kind=backend.kind,
        queue=backend.queue,
        upstream=model,
        context_window=context,
        max_tokens=context,
        input_price=0.0,
        output_price=0.0,
        aliases=(),
        base_url=backend.base_url,
        api_key_env=backend.api_key_env,
        enabled=backend.enabled,
        created=int(float(worker.get("started") or 0)),
    )


class LiveWorkers:
    """Whether a live worker can serve a route; a positive answer is trusted for `ttl` s."""

    def __init__(self, liveness: Liveness, ttl: float = 1.0) -> None:
        self.liveness, self.ttl = liveness, ttl
        self._seen: dict[tuple[str, str | None], float] = {}

    def any_target(self, kind: str, queue: str, upstream: str) -> bool:
        """Whether a live worker serves `queue` (and, for announcing kinds, `upstream`)."""
        target = (queue, upstream if kind in ANNOUNCING_KINDS else None)
        seen = self._seen.get(target)
        if seen is not None and time.monotonic() - seen < self.ttl:
            return True
        if target[1] is None:
            alive = self.liveness.live_counts([queue])[queue] > 0
        else:
            alive = self.liveness.live_model_counts([(queue, upstream)])[(queue, upstream)] > 0
        if alive:
            self._seen[target] = time.monotonic()
        else:
            self._seen.pop(target, None)
        return alive

    def any_on_queue(self, queue: str) -> bool:
        """Whether a live worker serves `queue` (a positive answer trusted for `ttl` s)."""
        return self.any_target("", queue, "")

    def counts(self, routes: Iterable[ModelRoute]) -> dict[str, int]:
        """Live workers per route id, in one round trip per kind of target."""
        routes = list(routes)
        by_model = [r for r in routes if r.kind in ANNOUNCING_KINDS]
        queues = self.liveness.live_counts(r.queue for r in routes if r not in by_model)
        models = self.liveness.live_model_counts((r.queue, r.upstream) for r in by_model)
        return {
            r.id: models[(r.queue, r.upstream)] if r in by_model else queues[r.queue]
            for r in routes
        }


class Router:
    """Everything a request handler needs, created once per app (per gunicorn worker)."""

    def __init__(self, config: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.config = config
        self.redis = redis_client(config["REDIS_URL"])
        self.jobs = JobStore(
            self.redis,
            job_ttl=int(config["JOB_TTL"]),
            idempotency_ttl=int(config["IDEMPOTENCY_TTL"]),
        )
        self.liveness = Liveness(self.redis)
        self.live = LiveWorkers(self.liveness)
        self.engine = make_engine(config["DATABASE_URL"])
        init_db(self.engine, env)
        self.registry = RegistryCache(self.engine, float(config["REGISTRY_TTL"]), self.liveness)
        self.health = BackendHealth(self.redis, BreakerPolicy.from_env(env), closed_ttl=0.25)
        self.load = LoadView(self.liveness, self.health, self.jobs)
        self.picker = Picker(self.live, self.health, self.load, int(config["QUEUE_LIMIT"]))
        self.presence = Presence(self.liveness, float(config["HEARTBEAT_INTERVAL"]))


def router() -> Router:
    """The current app's Router."""
    found: Router = current_app.extensions["router"]
    return found
