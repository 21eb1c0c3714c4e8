"""What the API knows of each queue's load, read from Redis and cached for half a second
per process: the backlog (jobs accepted, not started), live workers with their capacity,
running jobs and start-up failures, and each backend's recent service times. Routing
policies and admission control read it; nothing here writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from core.ttl import TTLCache
from registry.queries import DeploymentInfo
from tasks.health import BackendHealth, BackendStats
from tasks.jobs import ANONYMOUS, JobStore
from tasks.liveness import Liveness

T = TypeVar("T")


@dataclass(frozen=True)
class WorkerLoad:
    """What one live worker said on its last beat, parsed once per refresh."""

    id: str
    queues: frozenset[str]
    capacity: int
    running: dict[str, int]  # jobs running per backend
    failed: dict[str, str]  # queue -> why its backend could not be built at start


class LoadView:
    """Backlog, live worker load and start-up failures per queue, and service times per
    backend, cached for `ttl` seconds per process."""

    def __init__(
        self, liveness: Liveness, health: BackendHealth, jobs: JobStore, ttl: float = 0.5
    ) -> None:
        self.liveness, self.health, self.jobs = liveness, health, jobs
        self._cache: TTLCache[str, Any] = TTLCache(ttl)

    def _cached(self, key: str, build: Callable[[], T]) -> T:
        found: T = self._cache.get_or_build(key, build)
        return found

    def depth(self, queue: str, tenant: str | None = None) -> int:
        """Jobs accepted on `queue` and not started yet: all of them, or `tenant`'s (the API
        key whose share of the queue limit they count against)."""
        return self._cached(f"backlog:{queue}:{tenant}", lambda: self.jobs.backlog(queue, tenant))

    def turns(self, queue: str) -> int:
        """API keys with jobs held on `queue`, taking turns (tasks/lua/release.lua)."""
        return self._cached(f"turns:{queue}", lambda: self.jobs.turns(queue))

    def load(self, d: DeploymentInfo) -> tuple[int, int]:
        """(jobs of `d`'s backend running, capacity) over the live workers of its queue."""
        running = capacity = 0
        for w in self.workers():
            if d.queue in w.queues:
                capacity += w.capacity
                running += w.running.get(d.backend, 0)
        return running, capacity

    def failure(self, queue: str) -> str | None:
        """Why a live worker that should serve `queue` cannot, if one said so at start."""
        for w in self.workers():
            if queue in w.failed:
                return f"{w.failed[queue]} (worker {w.id})"
        return None

    def workers(self) -> list[WorkerLoad]:
        return self._cached("workers", self._live_workers)

    def _live_workers(self) -> list[WorkerLoad]:
        now = self.liveness.server_time()
        return [
            WorkerLoad(
                w["id"],
                frozenset(w.get("queues", "").split(",")),
                int(w.get("capacity") or w.get("concurrency") or 1),
                {b: int(n) for b, n in orjson.loads(w.get("active_backends") or "{}").items()},
                orjson.loads(w.get("failed") or "{}"),
            )
            for w in self.liveness.workers()
            if float(w["alive_until"]) > now
        ]

    def stats(self, backend: str) -> BackendStats:
        return self._cached(f"stats:{backend}", lambda: self.health.stats([backend])[backend])

    def ttft(self, backend: str) -> float:
        return float(self.stats(backend).ttft_p50 or 0.0)

    def queue_wait(self, d: DeploymentInfo, tenant: str = ANONYMOUS) -> float:
        """Seconds a job of `tenant` sent to deployment `d` now would wait before a worker
        starts it: the jobs ahead of it times the backend's recent service time over the
        queue's live capacity (0 while the backend has no recent record). Keys take turns,
        so ahead of it are its own waiting jobs and, at most as many again (plus one) for
        every other key with jobs held, never more than the whole backlog."""
        own, keys = self.depth(d.queue, tenant), self.turns(d.queue)
        waiting = min(self.depth(d.queue), (own + 1) * max(keys, 1))
        service = self.service_time(d.backend)
        if not waiting or not service:
            return 0.0
        _, capacity = self.load(d)
        return waiting * service / max(capacity, 1)

    def service_time(self, backend: str) -> float:
        """The backend's recent median time per job, in seconds (0 when unknown)."""
        return float(self.stats(backend).total_p50 or 0.0) / 1000
