"""What the API knows of each queue's load, read from Redis and cached for half a second
per process: the backlog (jobs accepted, not started), live workers with their capacity,
running jobs and start-up failures, and each backend's recent service times. Routing
policies and admission control read it; nothing here writes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from tasks.health import BackendHealth, BackendStats
from tasks.jobs import JobStore
from tasks.liveness import Liveness

if TYPE_CHECKING:
    from api.routing import Target


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
        self.liveness, self.health, self.jobs, self.ttl = liveness, health, jobs, ttl
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
        """Jobs accepted on `queue` and not started yet."""
        found: int = self._cached(f"backlog:{queue}", lambda: self.jobs.backlog(queue))
        return found

    def load(self, target: Target) -> tuple[int, int]:
        """(jobs of `target`'s backend running, capacity) over the live workers of its queue."""
        running = capacity = 0
        for w in self.workers():
            if target.queue in w.queues:
                capacity += w.capacity
                running += w.running.get(target.backend, 0)
        return running, capacity

    def failure(self, queue: str) -> str | None:
        """Why a live worker that should serve `queue` cannot, if one said so at start."""
        for w in self.workers():
            if queue in w.failed:
                return f"{w.failed[queue]} (worker {w.id})"
        return None

    def workers(self) -> list[WorkerLoad]:
        found: list[WorkerLoad] = self._cached("workers", self._live_workers)
        return found

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
        found: BackendStats = self._cached(
            f"stats:{backend}", lambda: self.health.stats([backend])[backend]
        )
        return found

    def ttft(self, backend: str) -> float:
        return float(self.stats(backend).ttft_p50 or 0.0)

    def queue_wait(self, target: Target) -> float:
        """Seconds a job sent to `target` now would wait before a worker starts it: the
        backlog times the backend's recent service time over the queue's live capacity
        (0 while the backend has no recent record)."""
        waiting = self.depth(target.queue)
        service = self.service_time(target.backend)
        if not waiting or not service:
            return 0.0
        _, capacity = self.load(target)
        return waiting * service / max(capacity, 1)

    def service_time(self, backend: str) -> float:
        """The backend's recent median time per job, in seconds (0 when unknown)."""
        return float(self.stats(backend).total_p50 or 0.0) / 1000
