"""The per-backend circuit breaker and outcome record, on the real Redis."""

from __future__ import annotations

import time

from core.settings import Settings
from tasks.health import BackendHealth, BreakerPolicy, Verdict

FAST = BreakerPolicy(failures=3, error_rate=0.5, window=60, min_requests=6, cooldown=0.3)


def test_consecutive_failures_open_then_one_probe_then_close(r) -> None:  # type: ignore[no-untyped-def]
    h = BackendHealth(r, FAST)
    assert h.allow("b") is Verdict.CLOSED
    assert [h.record("b", False, 10, 20) for _ in range(3)] == ["closed", "closed", "open"]
    assert h.allow("b") is Verdict.OPEN  # open: fail over at once
    time.sleep(0.35)
    assert h.allow("b") is Verdict.PROBE  # the cool-down is over: this request is the probe
    assert h.allow("b") is Verdict.OPEN  # ... and the only one
    assert h.record("b", True, 10, 20) == "closed"
    assert h.allow("b") is Verdict.CLOSED


def test_the_api_trusts_a_closed_circuit_only_for_its_ttl(r) -> None:  # type: ignore[no-untyped-def]
    api, worker = BackendHealth(r, FAST, closed_ttl=0.2), BackendHealth(r, FAST)
    assert api.allow("b") is Verdict.CLOSED
    for _ in range(3):
        worker.record("b", False, 1, 1)
    assert api.allow("b") is Verdict.CLOSED  # seen closed just now: not asked again yet
    time.sleep(0.25)
    assert api.allow("b") is Verdict.OPEN  # asked again: open
    assert api.allow("b") is Verdict.OPEN  # an open circuit is never cached


def test_a_failed_probe_opens_again(r) -> None:  # type: ignore[no-untyped-def]
    h = BackendHealth(r, FAST)
    for _ in range(3):
        h.record("b", False, 1, 1)
    time.sleep(0.35)
    assert h.allow("b") is Verdict.PROBE
    assert h.record("b", False, 1, 1) == "open"
    assert h.allow("b") is Verdict.OPEN


def test_error_rate_opens_without_a_consecutive_run(r) -> None:  # type: ignore[no-untyped-def]
    h = BackendHealth(r, FAST)
    states = [h.record("b", ok, 1, 1) for ok in (True, False, True, False, True, False)]
    assert states[-1] == "open"  # 3 of 6 failed, never 3 in a row
    assert BackendHealth(r, FAST).states(["b", "never"]) == {"b": "open", "never": "closed"}


def test_successes_keep_it_closed_and_stats_add_up(r) -> None:  # type: ignore[no-untyped-def]
    h = BackendHealth(r, FAST)
    for i in range(10):
        h.record("b", i != 0, ttft_ms=100 + i, total_ms=1000 + i)
    s = h.stats(["b"])["b"]
    assert s.state == "closed" and s.requests == 10 and s.error_rate == 0.1
    assert s.ttft_p50 is not None and 100 <= s.ttft_p50 <= 109
    assert s.total_p99 is not None and 1008 <= s.total_p99 <= 1009
    empty = h.stats(["quiet"])["quiet"]
    assert (empty.requests, empty.ttft_p50, empty.error_rate) == (0, None, 0.0)


def test_policy_from_settings() -> None:
    env = {"ROUTER_BREAKER_FAILURES": "2", "ROUTER_BREAKER_COOLDOWN": "1.5"}
    p = BreakerPolicy.from_settings(Settings.load(env))
    assert (p.failures, p.cooldown, p.window) == (2, 1.5, 60.0)
