"""The router's services for one Flask app: Redis, job store, limits per API key, worker
liveness and a short-lived registry snapshot. Built by create_app, found at
app.extensions["services"].
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from flask import current_app

from api.load import LoadView
from api.presence import Presence
from api.routing import Picker
from core.kinds import announces, discovers
from core.settings import Settings
from core.ttl import TTLCache
from registry.db import init_db, make_engine
from registry.queries import BackendInfo, ModelRoute, Snapshot, deployment_info, load_snapshot
from tasks.connections import redis_client
from tasks.health import BackendHealth, BreakerPolicy
from tasks.jobs import JobStore
from tasks.liveness import Liveness
from tasks.tenants import Tenants

DISCOVERED_CONTEXT = 32768  # context window of a discovered model that reports none


class RegistryCache:
    """The registry as of at most `ttl` seconds ago: CLI changes show up without a restart,
    and the database is read once per second, not once per request. Models that live
    llm-d workers discovered on their cluster are added to each snapshot."""

    def __init__(self, engine: Any, ttl: float, liveness: Liveness | None = None) -> None:
        self.engine, self.liveness = engine, liveness
        self._cache: TTLCache[str, Snapshot] = TTLCache(ttl)

    def get(self) -> Snapshot:
        """The current snapshot; one request per process reloads it when it is stale."""
        return self._cache.get_or_build("snapshot", self._load)

    def _load(self) -> Snapshot:
        snapshot = load_snapshot(self.engine)
        return snapshot.with_routes(self._discovered(snapshot))

    def _discovered(self, snapshot: Snapshot) -> list[ModelRoute]:
        if self.liveness is None:
            return []
        routes = []
        for backend in snapshot.backends():
            if discovers(backend.kind) and backend.enabled:
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
        context_window=context,
        max_tokens=context,
        input_price=0.0,
        output_price=0.0,
        aliases=(),
        created=int(float(worker.get("started") or 0)),
        deployments=(deployment_info(backend, model),),
    )


class LiveWorkers:
    """Whether a live worker can serve a route; a positive answer is trusted for `ttl` s."""

    def __init__(self, liveness: Liveness, ttl: float = 1.0) -> None:
        self.liveness = liveness
        self._seen: TTLCache[tuple[str, str | None], bool] = TTLCache(ttl)

    def any_target(self, kind: str, queue: str, upstream: str) -> bool:
        """Whether a live worker serves `queue` (and, for announcing kinds, `upstream`).
        Only a positive answer is kept: a worker that just started is seen at once."""
        target = (queue, upstream if announces(kind) else None)
        if self._seen.get(target):
            return True
        if target[1] is None:
            alive = self.liveness.live_counts([queue])[queue] > 0
        else:
            alive = self.liveness.live_model_counts([(queue, upstream)])[(queue, upstream)] > 0
        if alive:
            self._seen.put(target, True)
        return alive

    def any_on_queue(self, queue: str) -> bool:
        """Whether a live worker serves `queue` (a positive answer trusted for `ttl` s)."""
        return self.any_target("", queue, "")

    def counts(self, routes: Iterable[ModelRoute]) -> dict[str, int]:
        """Live workers serving each route's primary deployment, per route id, in one
        round trip per kind of target (queue, or queue and model)."""
        primaries = {r.id: r.primary for r in routes}
        by_model = {i: d for i, d in primaries.items() if announces(d.kind)}
        queues = self.liveness.live_counts(
            d.queue for i, d in primaries.items() if i not in by_model
        )
        models = self.liveness.live_model_counts((d.queue, d.upstream) for d in by_model.values())
        return {
            i: models[(d.queue, d.upstream)] if i in by_model else queues[d.queue]
            for i, d in primaries.items()
        }


class Services:
    """Everything a request handler needs, created once per app (per gunicorn worker)."""

    def __init__(self, config: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.config = config
        self.redis = redis_client(config["REDIS_URL"])
        self.jobs = JobStore(
            self.redis,
            job_ttl=int(config["JOB_TTL"]),
            idempotency_ttl=int(config["IDEMPOTENCY_TTL"]),
            ahead=int(config["DISPATCH_AHEAD"]),
        )
        self.tenants = Tenants(self.redis)
        self.liveness = Liveness(self.redis)
        self.live = LiveWorkers(self.liveness)
        self.engine = make_engine(config["DATABASE_URL"])
        init_db(self.engine, env)
        self.registry = RegistryCache(self.engine, float(config["REGISTRY_TTL"]), self.liveness)
        policy = BreakerPolicy.from_settings(Settings.from_config(config))
        self.health = BackendHealth(self.redis, policy, closed_ttl=0.25)
        self.load = LoadView(self.liveness, self.health, self.jobs)
        self.picker = Picker(self.live, self.health, self.load, int(config["QUEUE_LIMIT"]))
        self.presence = Presence(self.liveness, float(config["HEARTBEAT_INTERVAL"]))


def services() -> Services:
    """The current app's Services."""
    found: Services = current_app.extensions["services"]
    return found
