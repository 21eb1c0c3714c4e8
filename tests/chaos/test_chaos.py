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


def test_ten_redis_restarts_lose_no_job_and_leave_no_worker_stuck() -> None:
    """Jobs flow to a gevent provider worker and a threads local worker while Redis is
    restarted 10 times; nobody restarts a worker, yet every accepted job completes."""
    result = chaos.redis_restart(restarts=10, every=4.0, rate=10.0, local_rate=0.5)
    assert result["accepted_grok"] > 0 and result["accepted_local"] > 0
    assert result["lost"] == 0, result
    assert result["stuck_workers"] == 0, result  # alive, announcing their queues
    assert result["consumer_kicks"] == result["consumer_exits"] == 0, result  # none stalled
    assert result["resumed_grok_max_s"] < 10, result  # consumed again soon after each restart


def test_a_consumer_stranded_in_its_read_is_restarted_and_its_jobs_complete() -> None:
    """Redis answers the heartbeat but never the consumer's BRPOP: the worker's consumer
    watch drops the broker connection, Celery reconnects, the jobs run; no worker restart."""
    result = chaos.consumer_stall(jobs=12)
    assert result["stranded_connections"] >= 1
    assert result["accepted"] > 0 and result["lost"] == 0, result
    assert result["consumer_kicks"] == 1 and result["consumer_resumed"] >= 1, result
    assert result["consumer_exits"] == result["stuck_workers"] == 0, result


def test_least_loaded_moves_work_off_a_slow_deployment() -> None:
    result = chaos.slow_backend(requests=36, clients=12)
    assert result["priority"] == {"openai": 36, "grok": 0}
    assert result["least-loaded"]["grok"] > result["least-loaded"]["openai"]
