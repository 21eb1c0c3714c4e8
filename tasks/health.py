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
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import redis

from core.settings import DEFAULTS, Settings
from core.ttl import TTLCache
from tasks import keys
from tasks.jobs import lua


@dataclass(frozen=True)
class BreakerPolicy:
    """When a backend's circuit opens, and for how long. Workers and API build it from the
    same settings (ROUTER_BREAKER_*), so they agree on every circuit."""

    failures: int = DEFAULTS.breaker_failures  # consecutive failures that open the circuit
    error_rate: float = DEFAULTS.breaker_error_rate  # ... or this share of failures in the window
    window: float = DEFAULTS.breaker_window  # seconds of outcomes the rate and latency look at
    min_requests: int = DEFAULTS.breaker_min_requests  # fewest outcomes before the rate counts
    cooldown: float = DEFAULTS.breaker_cooldown  # seconds open before one probe is let through
    keep: int = 500  # outcomes kept per backend

    @classmethod
    def from_settings(cls, settings: Settings) -> BreakerPolicy:
        return cls(
            failures=settings.breaker_failures,
            error_rate=settings.breaker_error_rate,
            window=settings.breaker_window,
            min_requests=settings.breaker_min_requests,
            cooldown=settings.breaker_cooldown,
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


class Verdict(IntEnum):
    """May a request go to a backend now? The values are the ones tasks/lua/allow.lua
    returns."""

    OPEN = 0  # the circuit is open (or its one probe is already out): fail over
    CLOSED = 1  # send it
    PROBE = 2  # the cool-down is over: this request is the half-open probe


class BackendHealth:
    """Breaker transitions and outcome stats, each one round trip."""

    def __init__(self, client: redis.Redis, policy: BreakerPolicy, closed_ttl: float = 0) -> None:
        """`closed_ttl`: seconds to trust a backend's closed circuit without asking Redis
        again (the API: one round trip less per request; a circuit that opens is seen
        that much later). 0: ask every time."""
        self.redis, self.policy = client, policy
        self._record = client.register_script(lua("outcome"))
        self._allow = client.register_script(lua("allow"))
        self._closed: TTLCache[str, bool] = TTLCache(closed_ttl)

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

    def allow(self, backend: str) -> Verdict:
        """Whether a request may go to `backend` now. Only a closed circuit is trusted
        for `closed_ttl`: an open one must be asked again to let its probe through."""
        if self._closed.get(backend):
            return Verdict.CLOSED
        keys_ = [keys.circuit_key(backend), keys.probe_key(backend)]
        verdict = Verdict(int(self._allow(keys=keys_, args=[self.policy.cooldown])[0]))
        if verdict is Verdict.CLOSED:
            self._closed.put(backend, True)
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
