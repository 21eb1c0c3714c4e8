"""`/metrics`: completion counters and histograms parsed back with prometheus' own parser,
multiprocess mode summing real processes, and scrape-time gauges from the session's real
Redis. What records a completion is tested in test_accounting.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from api import metrics as api_metrics
from api.blueprints import metrics as metrics_bp
from api.metrics import record_completion, render
from registry.crud import add_backend
from tasks import keys
from tasks.liveness import Liveness
from tasks.metrics import read_cluster

ROOT = Path(__file__).resolve().parents[2]


def samples(text: str | bytes) -> list[Any]:
    """Every sample of an exposition, parsed by prometheus_client's parser."""
    if isinstance(text, bytes):
        text = text.decode()
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def value(text: str | bytes, name: str, **labels: str) -> float | None:
    """The one sample called `name` whose labels include `labels`; None if absent."""
    found = [
        s.value for s in samples(text) if s.name == name and labels.items() <= s.labels.items()
    ]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def default_mode() -> None:
    if api_metrics.multiproc_dir(os.environ):
        pytest.skip("PROMETHEUS_MULTIPROC_DIR is set: this process is in multiprocess mode")


# -- record_completion --------------------------------------------------------------------


@pytest.mark.usefixtures("default_mode")
def test_recorded_completions_are_exposed() -> None:
    model = unique("m")
    record_completion(model, "bk", "200", 0.25, 0.05, 7, 3, None)
    record_completion(model, "bk", "502", 0.5, None, 0, 0, "other-model")
    text = render(None, None)[0]
    assert value(text, "router_requests_total", model=model, backend="bk", status="200") == 1
    assert value(text, "router_requests_total", model=model, backend="bk", status="502") == 1
    lat = "router_request_latency_seconds"
    assert value(text, f"{lat}_count", model=model) == 2
    assert value(text, f"{lat}_sum", model=model) == pytest.approx(0.75)
    assert value(text, f"{lat}_bucket", model=model, le="0.25") == 1
    assert value(text, f"{lat}_bucket", model=model, le="0.5") == 2
    ttft = "router_time_to_first_token_seconds"
    assert value(text, f"{ttft}_count", model=model) == 1  # the failed one had no token
    assert value(text, f"{ttft}_sum", model=model) == pytest.approx(0.05)
    assert value(text, "router_prompt_tokens_total", model=model, backend="bk") == 7
    assert value(text, "router_completion_tokens_total", model=model, backend="bk") == 3
    assert value(text, "router_fallbacks_total", model=model, fallback="other-model") == 1
    assert value(text, "process_cpu_seconds_total") is not None  # the default registry's own


def test_multiprocess_mode_sums_every_process(tmp_path: Path) -> None:
    """Two real processes record into PROMETHEUS_MULTIPROC_DIR; one scrape sums them, and
    this process's in-memory samples are not part of it."""
    model = unique("mp")
    code = (
        "import os, sys; from api.metrics import record_completion, scrape_dir; "
        "record_completion(sys.argv[1], 'bk', '200', float(sys.argv[2]), 0.1, 5, 2, None); "
        "assert scrape_dir(os.environ) == os.environ['PROMETHEUS_MULTIPROC_DIR']"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, model, latency], cwd=ROOT, env=env)
        for latency in ("0.5", "1.5")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    if not api_metrics.multiproc_dir(os.environ):
        record_completion(model, "in-memory", "200", 9.0, None, 0, 0, None)
    assert len(list(tmp_path.glob("counter_*.db"))) == 2  # one file per process

    text = render(None, str(tmp_path))[0]
    assert value(text, "router_requests_total", model=model, backend="bk", status="200") == 2
    lat = "router_request_latency_seconds"
    assert value(text, f"{lat}_count", model=model, backend="bk") == 2
    assert value(text, f"{lat}_sum", model=model, backend="bk") == pytest.approx(2.0)
    assert value(text, "router_prompt_tokens_total", model=model, backend="bk") == 10
    assert value(text, "router_requests_total", backend="in-memory") is None
    assert value(text, "process_cpu_seconds_total") is None


# -- scrape-time gauges -------------------------------------------------------------------


@pytest.fixture
def app(stack, tmp_path: Path):  # type: ignore[no-untyped-def]
    """An app on the session's Redis and a registry file of its own, serving /metrics."""
    app = create_app(
        {
            "REDIS_URL": stack.redis_url,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'router.db'}",
            "REGISTRY_TTL": 0.0,
            "TESTING": True,
        }
    )
    if "metrics" not in app.blueprints:
        app.register_blueprint(metrics_bp.bp)
    api_metrics.init_app(app)
    return app


@pytest.fixture
def busy_backend(app, stack) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """A registry backend whose queue has 3 jobs waiting, with one live worker and its circuit
    open; a second backend idle. Its Redis keys are removed afterwards."""
    name, queue, idle = unique("bk"), unique("q"), unique("idle")
    engine = app.extensions["services"].engine
    add_backend(engine, name, "local", queue)
    add_backend(engine, idle, "local", idle)
    client = stack.redis()
    liveness = Liveness(client)
    worker = unique("w")
    # queued just now: a live worker's reaper drops backlog entries older than
    # ROUTER_REDELIVER_AFTER whose job is not queued (these have no job hash)
    now = time.time()
    client.zadd(keys.queued_key(queue), {"job_a": now, "job_b": now, "job_c": now})
    liveness.beat(worker, 30, [queue], [], {"pid": "0"})
    client.hset(keys.circuit_key(name), "state", "open")
    yield name, queue
    liveness.goodbye(worker, [queue], [])
    client.delete(
        keys.queued_key(queue),
        keys.circuit_key(name),
        keys.worker_key(worker),
        keys.queue_workers_key(queue),
    )
    client.zrem(keys.WORKERS, worker)


def test_read_cluster_from_redis(stack, busy_backend) -> None:  # type: ignore[no-untyped-def]
    name, queue = busy_backend
    client = stack.redis()
    reading = read_cluster(client, Liveness(client), [(name, queue), ("nobody", "no-queue")])
    assert reading.queue_depth == {queue: 3, "no-queue": 0}
    assert reading.live_workers == {queue: 1, "no-queue": 0}
    assert reading.circuits == {name: "open", "nobody": "closed"}
    assert reading.circuit_open(name) and not reading.circuit_open("nobody")


def test_metrics_endpoint_has_redis_gauges(app, busy_backend) -> None:  # type: ignore[no-untyped-def]
    name, queue = busy_backend
    resp = app.test_client().get("/metrics")
    assert resp.status_code == 200
    assert resp.content_type.startswith("text/plain; version=0.0.4")
    text = resp.get_data(as_text=True)
    assert value(text, "router_redis_up") == 1
    assert value(text, "router_queue_depth", queue=queue) == 3
    assert value(text, "router_live_workers", queue=queue) == 1
    assert value(text, "router_circuit_open", backend=name) == 1
    idle = [
        s
        for s in samples(text)
        if s.name == "router_circuit_open" and s.labels["backend"].startswith("idle-")
    ]
    assert [s.value for s in idle] == [0]
    assert value(text, "router_queue_depth", queue="local-mps") is not None  # seeded backends


@pytest.mark.usefixtures("default_mode")
def test_http_responses_are_counted(app) -> None:  # type: ignore[no-untyped-def]
    client = app.test_client()
    labels = {"method": "GET", "endpoint": "/metrics", "status": "200"}
    first = value(client.get("/metrics").get_data(), "router_http_requests_total", **labels)
    second = value(client.get("/metrics").get_data(), "router_http_requests_total", **labels)
    assert (second or 0) - (first or 0) == 1
    client.get("/no/such/path")
    after = value(
        client.get("/metrics").get_data(),
        "router_http_requests_total",
        endpoint="unmatched",
        status="404",
    )
    assert after is not None and after >= 1


@pytest.mark.usefixtures("default_mode")
def test_a_multiproc_dir_set_after_start_is_ignored(tmp_path: Path) -> None:
    """This process keeps its samples in memory; reading an empty directory would lose them."""
    assert api_metrics.scrape_dir({}) is None
    assert api_metrics.scrape_dir({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}) is None


def test_metrics_answer_with_redis_down(tmp_path: Path) -> None:
    from tests.conftest import free_port

    app = create_app(
        {
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'router.db'}",
            "TESTING": True,
        }
    )
    if "metrics" not in app.blueprints:
        app.register_blueprint(metrics_bp.bp)
    resp = app.test_client().get("/metrics")
    assert resp.status_code == 200
    text = resp.get_data(as_text=True)
    assert value(text, "router_redis_up") == 0
    assert value(text, "router_queue_depth", queue="local-mps") is None
