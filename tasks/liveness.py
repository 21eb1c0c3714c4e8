"""Which workers are alive, on which queues; and the reaper that redelivers a dead
worker's jobs without waiting for the broker's visibility timeout.

A worker's heartbeat stores "alive until" (Redis server time + ttl) in sorted sets, so
every reader compares against the same clock: no skew between a Mac and a server.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis

from tasks import keys
from tasks.jobs import lua


@dataclass(frozen=True)
class Requeued:
    """A job the reaper took back from a dead worker."""

    job_id: str
    queue: str
    attempt: int


class Liveness:
    """Heartbeats, goodbyes, live counts and reaping, each one script call."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._beat = client.register_script(lua("heartbeat"))
        self._goodbye = client.register_script(lua("goodbye"))
        self._reap = client.register_script(lua("reap"))
        self._live = client.register_script(lua("live"))
        self._stale = client.register_script(lua("stale"))
        self._presence = client.register_script(lua("presence"))

    def beat(
        self,
        worker_id: str,
        ttl: float,
        queues: Iterable[str],
        models: Iterable[str],
        info: dict[str, str],
    ) -> None:
        """Say this worker is alive for `ttl` more seconds on `queues`, with `models` loaded."""
        flat = [x for kv in info.items() for x in kv]
        self._beat(
            keys=[keys.WORKERS, keys.worker_key(worker_id)],
            args=[worker_id, ttl, keys.PREFIX, ",".join(queues), ",".join(models), *flat],
        )

    def goodbye(self, worker_id: str, queues: Iterable[str], models: Iterable[str]) -> None:
        """Mark this worker dead now (clean shutdown)."""
        args = [worker_id, keys.PREFIX, ",".join(queues), ",".join(models)]
        self._goodbye(keys=[keys.WORKERS], args=args)

    def reap(self, max_workers: int = 50) -> list[Requeued]:
        """Requeue the running jobs of expired workers; the caller publishes them."""
        flat = self._reap(keys=[keys.WORKERS], args=[keys.PREFIX, max_workers])
        return [Requeued(flat[i], flat[i + 1], int(flat[i + 2])) for i in range(0, len(flat), 3)]

    def lost_deliveries(
        self, queues: Iterable[str], older_than: float, job_ttl: int, limit: int = 200
    ) -> list[Requeued]:
        """Jobs queued on `queues` longer than `older_than` s with nothing waiting on their
        queue: their message was lost; the caller publishes them again (same attempt:
        claims dedupe). Synchronous jobs whose API process is gone are cancelled instead."""
        indexes = [keys.queued_key(q) for q in dict.fromkeys(queues)]
        if not indexes:
            return []
        flat = self._stale(
            keys=[keys.APIS, *indexes], args=[keys.PREFIX, older_than, limit, job_ttl]
        )
        return [Requeued(flat[i], flat[i + 1], int(flat[i + 2])) for i in range(0, len(flat), 3)]

    def api_beat(self, api_id: str, ttl: float) -> None:
        """Say this API process is alive for `ttl` more seconds (0: it is going away now).
        Synchronous jobs name their API process; a worker drops those whose owner died."""
        self._presence(keys=[keys.APIS], args=[api_id, ttl])

    def try_lock(self, owner: str, seconds: float) -> bool:
        """One reaper pass at a time across all workers."""
        return bool(self.redis.set(keys.REAPER_LOCK, owner, nx=True, px=int(seconds * 1000)))

    def live_counts(self, queues: Iterable[str]) -> dict[str, int]:
        """Number of workers with an unexpired heartbeat, per queue."""
        names = list(dict.fromkeys(queues))
        return dict(
            zip(names, self._count([keys.queue_workers_key(q) for q in names]), strict=True)
        )

    def live_model_counts(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Number of live workers on each (queue, model) that have the model loaded."""
        wanted = list(dict.fromkeys(pairs))
        found = self._count([keys.model_workers_key(q, m) for q, m in wanted])
        return dict(zip(wanted, found, strict=True))

    def _count(self, zsets: list[str]) -> list[int]:
        return [int(c) for c in self._live(keys=zsets)] if zsets else []

    def announced(self, queue: str) -> dict[str, dict[str, str]]:
        """Models announced by the live workers of `queue`: model -> that worker's facts."""
        now = self.server_time()
        found: dict[str, dict[str, str]] = {}
        for w in self.workers():
            if float(w["alive_until"]) <= now or queue not in w.get("queues", "").split(","):
                continue
            for model in filter(None, w.get("models", "").split(",")):
                found.setdefault(model, w)
        return found

    def live_queues(self) -> list[str]:
        """The queues some live worker consumes."""
        now = self.server_time()
        found = {
            q
            for w in self.workers()
            if float(w["alive_until"]) > now
            for q in w.get("queues", "").split(",")
            if q
        }
        return sorted(found)

    def server_time(self) -> float:
        """Redis's clock, the one every `alive_until` is measured against."""
        seconds, micros = cast(Any, self.redis.time())
        return float(seconds) + float(micros) / 1e6

    def workers(self) -> list[dict[str, str]]:
        """What every registered worker announced, with `alive_until` (server time)."""
        members: Any = self.redis.zrange(keys.WORKERS, 0, -1, withscores=True)
        pipe = self.redis.pipeline(transaction=False)
        for worker_id, _ in members:
            pipe.hgetall(keys.worker_key(worker_id))
        out = []
        for (worker_id, until), info in zip(members, pipe.execute(), strict=True):
            out.append({**info, "id": worker_id, "alive_until": f"{until:.3f}"})
        return out
