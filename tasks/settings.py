"""Worker-side settings, read from the environment when a worker starts (never at import).

The API reads the same `ROUTER_*` names through Flask config; both default alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Settings:
    """Knobs shared by the Celery config, the task and the worker runtime."""

    redis_url: str = DEFAULT_REDIS_URL
    job_ttl: int = 3600  # seconds a finished job's hash and stream are kept
    request_timeout: float = 600.0  # longest a job may run; Celery time limits follow it
    heartbeat_interval: float = 2.0  # a worker is dead after 3 missed heartbeats
    concurrency: int | None = None  # None: by pool (threads 8, gevent 1000)
    task_events: bool = False  # `irouter flower` turns them on while someone watches it
    redeliver_after: float = 30.0  # a queued job whose message is gone is published again
    redis_timeout: float = 10.0  # longest a worker's Redis command waits for its answer

    @property
    def heartbeat_ttl(self) -> float:
        return 3 * self.heartbeat_interval

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build from REDIS_URL and ROUTER_* variables, falling back to the defaults."""
        conc = env.get("ROUTER_WORKER_CONCURRENCY")
        return cls(
            redis_url=env.get("REDIS_URL", DEFAULT_REDIS_URL),
            job_ttl=int(env.get("ROUTER_JOB_TTL", cls.job_ttl)),
            request_timeout=float(env.get("ROUTER_REQUEST_TIMEOUT", cls.request_timeout)),
            heartbeat_interval=float(env.get("ROUTER_HEARTBEAT_INTERVAL", cls.heartbeat_interval)),
            concurrency=int(conc) if conc else None,
            task_events=env.get("ROUTER_TASK_EVENTS", "0") in ("1", "true", "yes"),
            redeliver_after=float(env.get("ROUTER_REDELIVER_AFTER", cls.redeliver_after)),
            redis_timeout=float(env.get("ROUTER_REDIS_TIMEOUT", cls.redis_timeout)),
        )
