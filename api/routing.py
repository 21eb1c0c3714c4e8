"""Which deployment serves a request, from live state shared by every API replica.

A model's deployments are tried in the order of its policy, then those of its fallback
models (in order, each followed by its own fallbacks). A candidate is usable when a live
worker serves it, its queue is under the limit, and its backend's circuit lets it through:

    priority      deployments in priority order (the primary first)
    least-loaded  fewest (running + queued) jobs per unit of live worker capacity
    latency       lowest recent median time to first token (unknown counts as fastest)
    weighted      random, in proportion to the deployments' weights
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from registry.queries import ModelRoute, Snapshot
from tasks.health import BackendHealth
from tasks.liveness import Liveness

#: Kinds whose workers announce the models they can serve; a deployment of one of these
#: kinds is usable only while a live worker announces its model (local: loaded; llm-d:
#: served by the cluster, as its /v1/models says).
ANNOUNCING_KINDS = frozenset({"local", "llm-d"})

_WorkerLoad = tuple[frozenset[str], int, dict[str, int]]


@dataclass(frozen=True)
class Target:
    """One deployment of a model: where its jobs go and what that backend calls it."""

    backend: str
    kind: str
    queue: str
    upstream: str
    base_url: str | None
    api_key_env: str | None
    weight: float = 1.0


@dataclass(frozen=True)
class Candidate:
    """A model (the one that will answer) on one of its deployments."""

    route: ModelRoute
    target: Target


def targets(route: ModelRoute) -> list[Target]:
    """The enabled deployments of a route, primary first."""
    return [
        Target(d.backend, d.kind, d.queue, d.upstream, d.base_url, d.api_key_env, d.weight)
        for d in route.live_deployments()
    ]


def chain(route: ModelRoute, snapshot: Snapshot) -> list[ModelRoute]:
    """The model, then its fallbacks breadth-first (each once; unknown or disabled skipped)."""
    out, seen, i = [route], {route.id}, 0
    while i < len(out):
        for name in out[i].fallbacks:
            nxt = snapshot.resolve(name)
            if nxt is not None and nxt.enabled and nxt.id not in seen:
                seen.add(nxt.id)
                out.append(nxt)
        i += 1
    return out


class LoadView:
    """Queue depth and live worker load per queue, cached for `ttl` seconds per process."""

    def __init__(self, liveness: Liveness, health: BackendHealth, ttl: float = 0.5) -> None:
        self.liveness, self.health, self.ttl = liveness, health, ttl
        self._cache: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def _cached(self, key: str, build: Any) -> Any:
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        value = build()
        with self._lock:
            self._cache[key] = (time.monotonic(), value)
        return value

    def depth(self, queue: str) -> int:
        """Jobs waiting on the Celery queue (a Redis list named after it)."""
        return int(self._cached(f"depth:{queue}", lambda: self.liveness.redis.llen(queue)))

    def load(self, target: Target) -> tuple[int, int]:
        """(jobs of `target`'s backend running, capacity) over the live workers of its queue."""
        workers: list[_WorkerLoad] = self._cached("workers", self._live_workers)
        running = capacity = 0
        for queues, cap, per_backend in workers:
            if target.queue in queues:
                capacity += cap
                running += per_backend.get(target.backend, 0)
        return running, capacity

    def _live_workers(self) -> list[_WorkerLoad]:
        """Live workers as (queues, capacity, running jobs per backend), parsed once."""
        now = self.liveness.server_time()
        return [
            (
                frozenset(w.get("queues", "").split(",")),
                int(w.get("capacity") or w.get("concurrency") or 1),
                {b: int(n) for b, n in orjson.loads(w.get("active_backends") or "{}").items()},
            )
            for w in self.liveness.workers()
            if float(w["alive_until"]) > now
        ]

    def ttft(self, backend: str) -> float:
        stats = self._cached(f"stats:{backend}", lambda: self.health.stats([backend])[backend])
        return float(stats.ttft_p50 or 0.0)


def ordered(route: ModelRoute, load: LoadView) -> list[Target]:
    """The route's deployments in the order its policy prefers now."""
    found = targets(route)
    policy = route.policy
    if len(found) < 2 or policy == "priority":
        return found
    if policy == "least-loaded":

        def busy(t: Target) -> float:
            running, capacity = load.load(t)
            return (running + load.depth(t.queue)) / max(capacity, 1)

        return sorted(found, key=busy)  # stable: ties keep priority order
    if policy == "latency":
        return sorted(found, key=lambda t: load.ttft(t.backend))
    return _weighted(found)


def _weighted(found: Iterable[Target]) -> list[Target]:
    pool, out = list(found), []
    while pool:
        pick = random.choices(range(len(pool)), weights=[max(t.weight, 1e-9) for t in pool])[0]
        out.append(pool.pop(pick))
    return out


def candidates(route: ModelRoute, snapshot: Snapshot, load: LoadView) -> Iterator[Candidate]:
    """Every deployment of the model and then of its fallbacks, in preference order."""
    for model in chain(route, snapshot):
        for target in ordered(model, load):
            yield Candidate(model, target)


@dataclass(frozen=True)
class Refusal:
    """Why a candidate could not take a request: `no_worker`, `queue_full`, `circuit_open`."""

    reason: str
    message: str


class Picker:
    """The first usable candidate of a request, or why there is none."""

    def __init__(self, live: Any, health: BackendHealth, load: LoadView, queue_limit: int):
        self.live, self.health, self.load, self.queue_limit = live, health, load, queue_limit

    def pick(
        self, route: ModelRoute, snapshot: Snapshot, skip: Any = None
    ) -> tuple[Candidate | None, list[Refusal]]:
        refusals: list[Refusal] = []
        for cand in candidates(route, snapshot, self.load):
            if skip is not None and skip(cand):
                continue
            refusal = self.refuse(cand.target)
            if refusal is None:
                return cand, refusals
            refusals.append(refusal)
        return None, refusals

    def refuse(self, t: Target) -> Refusal | None:
        """None when `t` can take a job now. The breaker is asked last: letting a request
        through as a half-open probe is a commitment to send it."""
        if not self.live.any_target(t.kind, t.queue, t.upstream):
            model = f"model `{t.upstream}` on " if t.kind in ANNOUNCING_KINDS else ""
            return Refusal(
                "no_worker",
                f"No worker is serving {model}queue `{t.queue}`. Start one with "
                f"`celery -A tasks worker -Q {t.queue}`.",
            )
        if self.queue_limit and self.load.depth(t.queue) >= self.queue_limit:
            return Refusal("queue_full", f"Queue `{t.queue}` has {self.queue_limit}+ jobs waiting.")
        if self.health.allow(t.backend) == 0:
            return Refusal(
                "circuit_open",
                f"Backend `{t.backend}` is failing and its circuit is open; it is retried "
                f"within {self.health.policy.cooldown:g} s.",
            )
        return None
