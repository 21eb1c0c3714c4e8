"""Fault injection, end to end: the scenarios of bench/chaos.py at a small size, asserting
what must always hold (the figures come from the benchmark). Each scenario starts its own
stack: AOF Redis, the API under gunicorn, real workers, fake provider upstreams."""

from __future__ import annotations

import pytest

from bench import chaos

pytestmark = pytest.mark.timeout(600)


def test_workers_killed_mid_stream_lose_no_job_and_garble_no_text() -> None:
    result = chaos.sigkill(jobs=24, kill_every=2.0, clients=8)
    assert result["kills"] >= 1
    assert result["completed"] == result["jobs"]  # every text equals the unkilled answer
    assert result["max_restarts"] <= result["kills"]


@pytest.mark.parametrize("mode", ["503", "refused"])
def test_a_dead_primary_is_answered_by_the_fallback(mode: str) -> None:
    result = chaos.primary_down(requests=30, mode=mode, clients=4)
    assert result["by_fallback"] == result["requests"]
    assert result["open_requests"] > 0  # the breaker opened and requests kept flowing


def test_a_redis_restart_loses_no_accepted_job() -> None:
    result = chaos.redis_restart(seconds=8.0, rate=15.0, down=1.0)
    assert result["accepted"] > 0
    assert result["lost"] == 0, result["statuses"]


def test_least_loaded_moves_work_off_a_slow_deployment() -> None:
    result = chaos.slow_backend(requests=36, clients=12)
    assert result["priority"] == {"openai": 36, "grok": 0}
    assert result["least-loaded"]["grok"] > result["least-loaded"]["openai"]
