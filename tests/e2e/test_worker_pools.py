"""The bare worker command picks its pool from its queues (tasks/pools.py), for real."""

from __future__ import annotations


def test_provider_queue_worker_runs_gevent_and_local_runs_threads(
    stack, start_worker, worker
) -> None:
    from tasks.liveness import Liveness

    provider = start_worker("openai,anthropic", concurrency=50)
    pools = {w["pid"]: w for w in Liveness(stack.redis()).workers()}
    assert pools[str(provider.proc.pid)]["pool"] == "gevent"
    assert pools[str(provider.proc.pid)]["queues"] == "anthropic,openai"
    assert pools[str(worker.proc.pid)]["pool"] == "thread"
    assert b"torch" not in provider.log.read_bytes()  # provider workers never load a model
    provider.stop()
