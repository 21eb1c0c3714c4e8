"""Backend health shared by every worker and API replica, in Redis: a circuit breaker per
backend and its recent outcomes (time to first token, total time, success).

Workers `record` each finished job; the API asks `allow` before sending a job to a backend
and reads `stats` for load-aware choice and the operator view.

    closed --(N consecutive failures, or error rate >= R over the window)--> open
    open --(cool-down over: one request let through as the probe)--> half_open
    half_open --(probe succeeds)--> closed;  --(probe fails)--> open again
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from tasks import keys
from tasks.jobs import lua


@dataclass(frozen=True)
class BreakerPolicy:
    """When a backend's circuit opens, and for how long. Workers and API read the same
    ROUTER_BREAKER_* variables."""

    failures: int = 5  # consecutive failures that open the circuit
    error_rate: float = 0.5  # ... or this share of failures in the window
    window: float = 60.0  # seconds of outcomes the error rate and latency look at
    min_requests: int = 10  # fewest outcomes in the window before the rate counts
    cooldown: float = 10.0  # seconds open before one probe is let through
    keep: int = 500  # outcomes kept per backend

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BreakerPolicy:
        d = cls()
        return cls(
            failures=int(env.get("ROUTER_BREAKER_FAILURES", d.failures)),
            error_rate=float(env.get("ROUTER_BREAKER_ERROR_RATE", d.error_rate)),
            window=float(env.get("ROUTER_BREAKER_WINDOW", d.window)),
            min_requests=int(env.get("ROUTER_BREAKER_MIN_REQUESTS", d.min_requests)),
            cooldown=float(env.get("ROUTER_BREAKER_COOLDOWN", d.cooldown)),
        )


@dataclass(frozen=True)
class BackendStats:
    """A backend's recent record: circuit state and what its jobs took (ms)."""

    backend: str
    state: str
    requests: int
    error_rate: float
    ttft_p50: float | None
    ttft_p99: float | None
    total_p50: float | None
    total_p99: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "circuit": self.state,
            "requests": self.requests,
            "error_rate": round(self.error_rate, 4),
            "ttft_ms": {"p50": self.ttft_p50, "p99": self.ttft_p99},
            "latency_ms": {"p50": self.total_p50, "p99": self.total_p99},
        }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1], 1)


class BackendHealth:
    """Breaker transitions and outcome stats, each one round trip."""

    def __init__(self, client: redis.Redis, policy: BreakerPolicy, closed_ttl: float = 0) -> None:
        """`closed_ttl`: seconds to trust a backend's closed circuit without asking Redis
        again (the API: one round trip less per request; a circuit that opens is seen
        that much later). 0: ask every time."""
        self.redis, self.policy = client, policy
        self._record = client.register_script(lua("outcome"))
        self._allow = client.register_script(lua("allow"))
        self.closed_ttl = closed_ttl
        self._closed_until: dict[str, float] = {}

    def record(
        self, backend: str, ok: bool, ttft_ms: float, total_ms: float, pipe: Any = None
    ) -> str:
        """One finished job of `backend`; returns the circuit state after it (or, given a
        pipeline `pipe`, adds the call to it: the state is then that call's reply)."""
        p = self.policy
        state = self._record(
            keys=[keys.circuit_key(backend), keys.outcomes_key(backend)],
            args=[
                1 if ok else 0,
                f"{ttft_ms:.1f}",
                f"{total_ms:.1f}",
                p.failures,
                p.error_rate,
                p.window,
                p.min_requests,
                p.keep,
            ],
            client=pipe,
        )
        return str(state)

    def allow(self, backend: str) -> int:
        """1: closed; 2: let through as the half-open probe; 0: open, fail over."""
        if self._closed_until.get(backend, 0.0) > time.monotonic():
            return 1
        keys_ = [keys.circuit_key(backend), keys.probe_key(backend)]
        verdict = int(self._allow(keys=keys_, args=[self.policy.cooldown])[0])
        if verdict == 1 and self.closed_ttl:
            self._closed_until[backend] = time.monotonic() + self.closed_ttl
        return verdict

    def states(self, backends: Iterable[str]) -> dict[str, str]:
        """Circuit state per backend (closed when never recorded)."""
        names = list(backends)
        pipe = self.redis.pipeline(transaction=False)
        for b in names:
            pipe.hget(keys.circuit_key(b), "state")
        return {b: s or "closed" for b, s in zip(names, pipe.execute(), strict=True)}

    def stats(self, backends: Iterable[str]) -> dict[str, BackendStats]:
        """Recent outcomes per backend, within the policy's window."""
        names = list(backends)
        pipe = self.redis.pipeline(transaction=False)
        for b in names:
            pipe.hget(keys.circuit_key(b), "state")
            pipe.lrange(keys.outcomes_key(b), 0, -1)
        pipe.time()  # the clock outcomes were stamped with, not this host's
        raw = pipe.execute()
        seconds, micros = raw[-1]
        since = seconds + micros / 1e6 - self.policy.window
        out = {}
        for i, b in enumerate(names):
            state, entries = raw[2 * i] or "closed", raw[2 * i + 1]
            out[b] = _stats(b, state, entries, since)
        return out


def _stats(backend: str, state: str, entries: list[str], since: float) -> BackendStats:
    ttfts: list[float] = []
    totals: list[float] = []
    bad = 0
    for entry in entries:
        ts, ttft, total, ok = entry.split(":")
        if float(ts) < since:
            break  # newest first
        ttfts.append(float(ttft))
        totals.append(float(total))
        bad += ok == "0"
    n = len(ttfts)
    return BackendStats(
        backend=backend,
        state=state,
        requests=n,
        error_rate=bad / n if n else 0.0,
        ttft_p50=_quantile(ttfts, 0.5),
        ttft_p99=_quantile(ttfts, 0.99),
        total_p50=_quantile(totals, 0.5),
        total_p99=_quantile(totals, 0.99),
    )


def backend_report(
    health: BackendHealth, liveness: Any, rows: Iterable[tuple[str, str, bool]]
) -> list[dict[str, Any]]:
    """The operator view of (name, queue, enabled) backends: circuit, live workers, queue
    depth (jobs accepted and not started), latency and error rate over the breaker's window."""
    rows = list(rows)
    live = liveness.live_counts(q for _, q, _ in rows)
    pipe = health.redis.pipeline(transaction=False)
    for _, queue, _ in rows:
        pipe.zcard(keys.queued_key(queue))
    depths = pipe.execute()
    stats = health.stats(name for name, _, _ in rows)
    return [
        {
            "name": name,
            "queue": queue,
            "enabled": enabled,
            "live_workers": live.get(queue, 0),
            "queue_depth": int(depth),
            **stats[name].to_dict(),
        }
        for (name, queue, enabled), depth in zip(rows, depths, strict=True)
    ]
