"""What Redis says about the cluster right now: `read_cluster` reads queue depth, live
workers per queue, circuit state per backend and Redis' own memory use and limit. The
API's `/metrics` calls it at scrape time, so workers expose no metrics endpoint of their
own: their queues, heartbeats and circuits are all in Redis already.

The log context and the JSON log lines of the API and the workers are `core.logs`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis

from tasks import keys
from tasks.liveness import Liveness

# -- cluster readings ---------------------------------------------------------------------


@dataclass(frozen=True)
class RedisMemory:
    """Redis' own account of its memory (INFO memory): bytes used, and `maxmemory`, the
    limit past which it refuses writes (0: none)."""

    used: int
    limit: int


@dataclass(frozen=True)
class ClusterReading:
    """One look at Redis: waiting jobs and live workers per queue, circuit per backend, and
    Redis' memory (None where INFO is not allowed, as on some managed services)."""

    queue_depth: dict[str, int]
    live_workers: dict[str, int]
    circuits: dict[str, str]  # backend -> closed | open | half_open
    memory: RedisMemory | None = None

    def circuit_open(self, backend: str) -> bool:
        return self.circuits.get(backend) == "open"


def read_cluster(
    client: redis.Redis, liveness: Liveness, backends: Iterable[tuple[str, str]]
) -> ClusterReading:
    """Read (backend, queue) pairs in two round trips: the backlog of each queue (jobs
    accepted and not started, whether their message still waits in Redis or a worker has
    reserved it), the circuit hash of each backend and INFO memory in one pipeline, then
    the live-worker counts."""
    pairs = list(dict.fromkeys(backends))
    queues = list(dict.fromkeys(q for _, q in pairs))
    names = list(dict.fromkeys(b for b, _ in pairs))
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.zcard(keys.queued_key(queue))
    for name in names:
        pipe.hget(keys.circuit_key(name), "state")
    pipe.info("memory")
    *raw, info = pipe.execute(raise_on_error=False)
    for reply in raw:
        if isinstance(reply, Exception):
            raise reply
    depths = {q: int(n) for q, n in zip(queues, raw[: len(queues)], strict=True)}
    circuits = {b: s or "closed" for b, s in zip(names, raw[len(queues) :], strict=True)}
    return ClusterReading(depths, liveness.live_counts(queues), circuits, _memory(info))


def _memory(info: object) -> RedisMemory | None:
    """INFO memory's reply as RedisMemory; None if the command was refused (a renamed or
    ACL-denied INFO must not cost the other gauges)."""
    if not isinstance(info, dict) or "used_memory" not in info:
        return None
    return RedisMemory(int(info["used_memory"]), int(info.get("maxmemory", 0)))
