"""Fallbacks and the circuit breaker through the API, on the session's Redis and local
worker: a queue nobody drains, an open circuit, with and without a fallback model."""

from __future__ import annotations

import time
import uuid

import pytest

from registry.crud import add_backend, add_model, set_model
from tasks.health import BackendHealth, BreakerPolicy
from tasks.liveness import Liveness

ASK = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0}


@pytest.fixture
def ghost(stack, registry_db):  # type: ignore[no-untyped-def]
    """A backend whose queue has a heartbeat but no consumer, and a model on it."""
    name = f"ghost-{uuid.uuid4().hex[:6]}"
    add_backend(registry_db, name, "openai-compatible", queue=name, base_url="http://127.0.0.1:9")
    add_model(registry_db, f"{name}-model", name, upstream="x")
    liveness = Liveness(stack.redis())
    liveness.beat(f"{name}-worker", 60, [name], [], {"pool": "gevent", "concurrency": "10"})
    yield name
    liveness.goodbye(f"{name}-worker", [name], [])


def _app(stack, **config):  # type: ignore[no-untyped-def]
    from api import create_app

    base = {
        "REDIS_URL": stack.redis_url,
        "DATABASE_URL": stack.db_url,
        "WORKER_WAIT": 1.0,
        "REGISTRY_TTL": 0.0,
        "TESTING": True,
    }
    return create_app({**base, **config}).test_client()


def test_a_job_stuck_in_its_queue_moves_to_the_fallback(stack, worker, registry_db, ghost) -> None:  # type: ignore[no-untyped-def]
    set_model(registry_db, f"{ghost}-model", fallbacks=["smollm2-135m"])
    client = _app(stack, QUEUE_WAIT=1.0)
    started = time.monotonic()
    resp = client.post("/v1/chat/completions", json={**ASK, "model": f"{ghost}-model"})
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["model"] == "smollm2-135m"
    assert resp.headers["x-router-model"] == "smollm2-135m"
    assert resp.headers["x-router-backend"] == "local"
    assert time.monotonic() - started >= 1.0  # it did wait in the ghost queue first
    stuck = stack.redis().lrange(ghost, 0, -1)
    assert len(stuck) == 1  # the abandoned delivery; its job was cancelled, so it is dropped


def test_without_a_fallback_a_stuck_job_keeps_waiting(stack, registry_db, ghost) -> None:  # type: ignore[no-untyped-def]
    client = _app(stack, QUEUE_WAIT=0.5, REQUEST_TIMEOUT=2.5)
    resp = client.post("/v1/chat/completions", json={**ASK, "model": f"{ghost}-model"})
    assert resp.status_code == 504  # no alternative: it waited for its deadline


def test_open_circuit_fails_fast_or_falls_back(stack, worker, registry_db, ghost) -> None:  # type: ignore[no-untyped-def]
    health = BackendHealth(stack.redis(), BreakerPolicy())
    for _ in range(BreakerPolicy().failures):
        health.record(ghost, False, 5, 5)
    client = _app(stack)
    started = time.monotonic()
    resp = client.post("/v1/chat/completions", json={**ASK, "model": f"{ghost}-model"})
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "circuit_open"
    assert resp.headers["Retry-After"] == "10"
    assert time.monotonic() - started < 1.0  # no WORKER_WAIT, no upstream timeout

    set_model(registry_db, f"{ghost}-model", fallbacks=["smollm2-135m"])
    resp = client.post("/v1/chat/completions", json={**ASK, "model": f"{ghost}-model"})
    assert resp.status_code == 200 and resp.get_json()["model"] == "smollm2-135m"
    status = client.get("/admin/backends").get_json()["data"]
    row = next(b for b in status if b["name"] == ghost)
    assert row["circuit"] == "open" and row["error_rate"] == 1.0 and row["live_workers"] == 1
