"""Redis' memory in `/metrics`: used bytes and maxmemory, read at scrape time beside the
other Redis gauges, from the session's real Redis (started as `irouter redis` starts it,
with a memory limit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from tasks.metrics import RedisMemory, read_cluster
from tests.conftest import free_port


def value(text: str, name: str) -> float | None:
    """The one unlabelled sample called `name` in an exposition; None if absent."""
    found = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]
    assert len(found) <= 1, f"{name} has {len(found)} samples"
    return found[0] if found else None


def scrape(redis_url: str, db_url: str) -> str:
    app = create_app({"REDIS_URL": redis_url, "DATABASE_URL": db_url, "TESTING": True})
    resp = app.test_client().get("/metrics")
    assert resp.status_code == 200
    return resp.get_data(as_text=True)


def test_metrics_show_redis_memory_and_its_limit(stack) -> None:  # type: ignore[no-untyped-def]
    client = stack.redis()
    limit = int(client.config_get("maxmemory")["maxmemory"])
    assert limit > 0, "the test Redis runs with a memory limit, as `irouter redis` does"
    text = scrape(stack.redis_url, stack.db_url)
    assert value(text, "router_redis_up") == 1
    assert value(text, "router_redis_memory_max_bytes") == limit
    used = value(text, "router_redis_memory_used_bytes")
    assert used is not None and 0 < used < limit
    key = "router:test:memory-gauge"
    try:
        client.set(key, "x" * (4 << 20))  # 4 MiB more is seen at the next scrape
        more = value(scrape(stack.redis_url, stack.db_url), "router_redis_memory_used_bytes")
        assert more is not None and more - used > 3 << 20
    finally:
        client.delete(key)


def test_no_memory_gauges_without_redis(tmp_path: Path) -> None:
    text = scrape(f"redis://127.0.0.1:{free_port()}/0", f"sqlite:///{tmp_path / 'r.db'}")
    assert value(text, "router_redis_up") == 0
    assert value(text, "router_redis_memory_used_bytes") is None


class NoInfo:
    """A Redis client whose INFO is refused (renamed or denied by an ACL, as on some
    managed services); everything else goes to the real one."""

    def __init__(self, real: redis.Redis) -> None:
        self.real = real

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self.real.pipeline(transaction=transaction)
        pipe.info = lambda *_: pipe.execute_command("NO-SUCH-INFO")  # type: ignore[method-assign]
        return pipe


def test_a_refused_info_costs_only_the_memory_gauges(stack) -> None:  # type: ignore[no-untyped-def]
    from tasks.liveness import Liveness

    client = stack.redis()
    reading = read_cluster(client, Liveness(client), [("local", "local-mps")])
    assert isinstance(reading.memory, RedisMemory) and reading.memory.used > 0
    refused = read_cluster(NoInfo(client), Liveness(client), [("local", "local-mps")])  # type: ignore[arg-type]
    assert refused.memory is None and refused.queue_depth.keys() == {"local-mps"}
