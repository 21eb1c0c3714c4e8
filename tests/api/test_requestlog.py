"""The request log (batched writer, bounded queue, cost, `irouter log tail`) on a SQLite file
of its own, and the JSON log lines that carry the request id (API) and job id (workers)."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from flask import Flask
from prometheus_client import REGISTRY
from sqlalchemy import Engine

from api import create_app, logging_json
from api import requestlog as api_requestlog
from api.requestlog import RequestLogWriter, log
from core.logs import (
    JsonFormatter,
    bind_log_context,
    celery_json_logging,
    current_job_id,
    current_request_id,
    set_request_id,
    task_log_context_begin,
    task_log_context_end,
)
from registry.db import init_db, make_engine
from registry.requestlog import (
    DAY,
    DEFAULT_RETENTION_DAYS,
    LogEntry,
    RequestLog,
    cost_usd,
    prune_entries,
    recent_entries,
    write_entries,
)
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'router.db'}"


@pytest.fixture
def log_db(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    init_db(eng, {})
    yield eng
    eng.dispose()


def entry(n: int, **kw: object) -> LogEntry:
    base: dict[str, object] = {
        "time": time.time(),
        "request_id": f"req_{n:04d}",
        "model": "gpt-4o-mini",
        "backend": "openai",
        "status": "200",
        "latency_ms": 100.0 + n,
        "ttft_ms": 10.0,
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "cost_usd": cost_usd(12, 34, 0.15, 0.60),
    }
    return LogEntry(**{**base, **kw})  # type: ignore[arg-type]


def test_cost_uses_prices_per_million_tokens() -> None:
    assert cost_usd(1000, 500, 0.15, 0.60) == pytest.approx(0.00045)
    assert cost_usd(2_000_000, 0, 2.5, 10.0) == pytest.approx(5.0)
    assert cost_usd(10, 10, 0.0, 0.0) == 0.0


def test_writer_batches_inserts(log_db: Engine) -> None:
    writer = RequestLogWriter(log_db, batch_size=50, autostart=False)
    for n in range(120):
        assert writer.submit(entry(n))
    assert recent_entries(log_db, 10) == []  # nothing written on the request path
    writer.start()
    writer.close()
    assert (writer.written, writer.batches, writer.dropped, writer.failed) == (120, 3, 0, 0)
    stored = recent_entries(log_db, 200)
    assert [e.request_id for e in stored] == [f"req_{n:04d}" for n in range(120)]
    assert stored[0].cost_usd == pytest.approx(cost_usd(12, 34, 0.15, 0.60))
    assert stored[0].ttft_ms == 10.0 and stored[0].fallback is None and stored[0].key_name is None


def test_writer_writes_within_the_flush_interval(log_db: Engine) -> None:
    writer = RequestLogWriter(log_db, flush_interval=0.05)
    writer.submit(entry(1, fallback="gpt-4o"))
    give_up = time.monotonic() + 5
    while not recent_entries(log_db, 1) and time.monotonic() < give_up:
        time.sleep(0.02)
    [stored] = recent_entries(log_db, 1)
    assert stored.fallback == "gpt-4o" and stored.id is not None
    writer.close()


def test_a_full_queue_drops_and_counts_without_blocking(log_db: Engine) -> None:
    before = REGISTRY.get_sample_value("router_request_log_dropped_total") or 0.0
    writer = RequestLogWriter(log_db, max_queue=5, autostart=False)
    started = time.monotonic()
    accepted = [writer.submit(entry(n)) for n in range(8)]
    assert time.monotonic() - started < 0.5
    assert accepted == [True] * 5 + [False] * 3 and writer.dropped == 3
    after = REGISTRY.get_sample_value("router_request_log_dropped_total") or 0.0
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        assert after - before == 3
    writer.start()
    writer.close()
    assert len(recent_entries(log_db, 10)) == 5


def test_the_writer_outlives_a_database_error(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'bare.db'}")  # no tables yet
    writer = RequestLogWriter(eng, flush_interval=0.01)
    writer.submit(entry(1))
    give_up = time.monotonic() + 5
    while writer.failed == 0 and time.monotonic() < give_up:
        time.sleep(0.01)
    assert (writer.failed, writer.written) == (1, 0) and writer.running()
    RequestLog.__table__.create(eng)  # type: ignore[attr-defined]
    writer.submit(entry(2))  # the same thread writes it
    writer.close()
    assert (writer.failed, writer.written) == (1, 1) and not writer.running()
    assert [e.request_id for e in recent_entries(eng, 5)] == ["req_0002"]


def test_init_app_writes_to_the_registry_database(tmp_path: Path, db_url: str) -> None:
    config = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "DATABASE_URL": db_url}
    app = create_app(config)
    writer = api_requestlog.init_app(app)
    assert writer is not None and app.extensions["requestlog"] is writer
    assert api_requestlog.init_app(app) is writer  # idempotent
    writer.submit(entry(7))
    writer.close()
    assert [e.request_id for e in recent_entries(app.extensions["services"].engine, 5)] == [
        "req_0007"
    ]
    off = create_app({**config, "REQUEST_LOG": "0"})
    assert api_requestlog.init_app(off) is None and off.extensions["requestlog"] is None


# -- irouter log tail ---------------------------------------------------------------------


def test_log_tail_prints_the_last_entries(log_db: Engine, db_url: str) -> None:
    write_entries(log_db, [entry(n, backend="local" if n % 2 else "openai") for n in range(5)])
    runner = CliRunner()
    table = runner.invoke(log, ["tail", "-n", "2"], env={"DATABASE_URL": db_url})
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].startswith("TIME") and "FALLBACK" in lines[0]
    assert ["req_0003" in lines[1], "req_0004" in lines[2], len(lines)] == [True, True, 3]
    assert "104ms" in lines[2] and "0.000022" in lines[2]

    as_json = runner.invoke(log, ["tail", "-n", "3", "--json"], env={"DATABASE_URL": db_url})
    assert as_json.exit_code == 0, as_json.output
    rows = [orjson.loads(line) for line in as_json.output.splitlines()]
    assert [r["request_id"] for r in rows] == ["req_0002", "req_0003", "req_0004"]
    assert rows[-1]["backend"] == "openai" and rows[-1]["key_name"] is None
    assert rows[-1]["cost_usd"] == pytest.approx(cost_usd(12, 34, 0.15, 0.60))


def test_log_tail_on_an_empty_log(db_url: str) -> None:
    out = CliRunner().invoke(log, ["tail"], env={"DATABASE_URL": db_url})
    assert out.exit_code == 0 and out.output.splitlines() == [api_requestlog.HEADER]


def test_log_tail_follow_prints_new_entries(log_db: Engine, db_url: str) -> None:
    write_entries(log_db, [entry(1)])
    code = "from api.requestlog import log; log()"
    args = [
        sys.executable,
        "-c",
        code,
        "tail",
        "--follow",
        "--json",
        "-n",
        "1",
        "--interval",
        "0.1",
    ]
    env = {**os.environ, "DATABASE_URL": db_url, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert orjson.loads(proc.stdout.readline())["request_id"] == "req_0001"
        write_entries(log_db, [entry(2), entry(3)])
        later = [orjson.loads(proc.stdout.readline())["request_id"] for _ in range(2)]
        assert later == ["req_0002", "req_0003"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- retention ----------------------------------------------------------------------------


def aged(n: int, days: float, **kw: object) -> LogEntry:
    """Entry `n`, finished `days` days ago."""
    return entry(n, time=time.time() - days * DAY, **kw)


def stored_ids(log_db: Engine) -> list[str]:
    return [e.request_id for e in recent_entries(log_db, 10_000)]


def test_prune_deletes_only_entries_older_than_the_cutoff(log_db: Engine) -> None:
    write_entries(log_db, [aged(n, 39.5 - n) for n in range(12)])  # 39.5 to 28.5 days old
    cutoff = time.time() - 30 * DAY
    assert prune_entries(log_db, cutoff, batch=4, max_batches=2) == 8  # two transactions
    assert stored_ids(log_db)[0] == "req_0008"
    assert prune_entries(log_db, cutoff, batch=4) == 2  # the rest, oldest first
    assert stored_ids(log_db) == ["req_0010", "req_0011"]
    assert prune_entries(log_db, cutoff) == 0


def test_the_writer_prunes_old_entries_by_itself(log_db: Engine) -> None:
    write_entries(log_db, [aged(n, 45) for n in range(3)] + [aged(3, 10)])
    writer = RequestLogWriter(log_db, flush_interval=0.01, retention_days=30)
    writer.submit(entry(4))
    writer.close()
    assert stored_ids(log_db) == ["req_0003", "req_0004"] and writer.pruned == 3
    keep_all = RequestLogWriter(log_db, flush_interval=0.01, retention_days=0)
    write_entries(log_db, [aged(5, 400)])
    keep_all.submit(entry(6))
    keep_all.close()
    assert "req_0005" in stored_ids(log_db) and keep_all.pruned == 0


def test_the_writer_prunes_once_an_interval_and_catches_up_a_backlog(log_db: Engine) -> None:
    write_entries(log_db, [aged(n, 60) for n in range(25)])
    writer = RequestLogWriter(
        log_db, flush_interval=0.01, autostart=False, prune_batch=5, prune_batches=2
    )

    def one_batch(n: int) -> None:
        """One entry, written as its own batch (with the prune after it, when due)."""
        time.sleep(0.05)  # past the flush interval: a backlog's next pass is due
        writer.submit(entry(n))
        writer.start()
        writer.close()

    one_batch(100)
    assert writer.pruned == 10  # a pass is bounded: two transactions of five
    one_batch(101)  # a backlog is left: the next batch goes on with it
    one_batch(102)
    assert writer.pruned == 25 and len(stored_ids(log_db)) == 3
    write_entries(log_db, [aged(200, 60)])
    one_batch(103)  # nothing was left last time: not again before the interval is over
    assert writer.pruned == 25 and "req_0200" in stored_ids(log_db)
    writer.prune_interval, writer._next_prune = 0.0, 0.0
    one_batch(104)
    assert writer.pruned == 26 and "req_0200" not in stored_ids(log_db)


def test_the_retention_comes_from_router_request_log_retention(tmp_path: Path, db_url: str) -> None:
    config = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "DATABASE_URL": db_url}
    default = api_requestlog.init_app(create_app(config))
    assert default is not None and default.retention_days == DEFAULT_RETENTION_DAYS == 30
    week = api_requestlog.init_app(create_app({**config, "REQUEST_LOG_RETENTION": 7}))
    assert week is not None and week.retention_days == 7
    assert api_requestlog.retention_days("0") == 0 and api_requestlog.retention_days(" 1.5") == 1.5
    for bad in ("30d", "-1", "nan"):
        with pytest.raises(ValueError, match="ROUTER_REQUEST_LOG_RETENTION"):
            api_requestlog.init_app(create_app({**config, "REQUEST_LOG_RETENTION": bad}))


def test_log_prune_deletes_what_is_past_the_retention(log_db: Engine, db_url: str) -> None:
    write_entries(log_db, [aged(1, 90), aged(2, 40), aged(3, 20), aged(4, 6), entry(5)])
    runner = CliRunner()
    env = {"DATABASE_URL": db_url, "ROUTER_REQUEST_LOG_RETENTION": None}
    out = runner.invoke(log, ["prune"], env=env)  # the default: 30 days
    assert out.exit_code == 0, out.output
    assert out.output.strip() == "pruned 2 request-log entries older than 30 days"
    out = runner.invoke(log, ["prune"], env={**env, "ROUTER_REQUEST_LOG_RETENTION": "10"})
    assert "pruned 1 " in out.output and stored_ids(log_db) == ["req_0004", "req_0005"]
    out = runner.invoke(log, ["prune", "--older-than", "0.5"], env=env)
    assert "pruned 1 " in out.output and stored_ids(log_db) == ["req_0005"]
    off = runner.invoke(log, ["prune"], env={**env, "ROUTER_REQUEST_LOG_RETENTION": "0"})
    assert off.exit_code == 0 and "nothing pruned" in off.output
    assert stored_ids(log_db) == ["req_0005"]
    refused = runner.invoke(log, ["prune", "--older-than", "0"], env=env)
    assert refused.exit_code == 2 and "--older-than" in refused.output


# -- JSON log lines -----------------------------------------------------------------------


def record(msg: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("api.serving", logging.INFO, __file__, 1, msg, args or ("world",), None)
    rec.__dict__.update(extra)
    return rec


def test_json_formatter_writes_one_object_per_line() -> None:
    out = JsonFormatter().format(record())
    assert "\n" not in out
    body = orjson.loads(out)
    assert body["message"] == "hello world" and body["level"] == "INFO"
    assert body["logger"] == "api.serving" and body["request_id"] is None
    assert "job_id" not in body
    assert body["time"].endswith("Z") and "T" in body["time"]


def test_json_formatter_carries_the_bound_context_and_extras() -> None:
    with bind_log_context(request_id="req_abc", job_id="job_123"):
        assert (current_request_id(), current_job_id()) == ("req_abc", "job_123")
        body = orjson.loads(JsonFormatter().format(record(backend="openai", n=3)))
        with bind_log_context(job_id="job_456"):
            set_request_id("req_set_inside")  # what a worker does once it has the job
            inner = orjson.loads(JsonFormatter().format(record()))
        assert current_request_id() == "req_abc"  # restored with the job id
    assert (current_request_id(), current_job_id()) == (None, None)
    assert (body["request_id"], body["job_id"], body["backend"], body["n"]) == (
        "req_abc",
        "job_123",
        "openai",
        3,
    )
    assert (inner["request_id"], inner["job_id"]) == ("req_set_inside", "job_456")
    explicit = orjson.loads(JsonFormatter().format(record(job_id="job_x", request_id="req_x")))
    assert (explicit["job_id"], explicit["request_id"]) == ("job_x", "req_x")


def test_json_formatter_keeps_tracebacks_on_one_line() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        rec = logging.LogRecord("w", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    out = JsonFormatter().format(rec)
    assert "\n" not in out
    assert "ValueError: bad\nthing" in orjson.loads(out)["exc_info"]


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restore the root and gunicorn loggers after a test changes them."""
    names = ("", *logging_json.GUNICORN_LOGGERS)
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    formatters = {h: h.formatter for _, hs in saved.values() for h in hs}
    yield
    for n, (level, handlers) in saved.items():
        logger = logging.getLogger(n)
        logger.setLevel(level)
        logger.handlers[:] = handlers
    for handler, formatter in formatters.items():
        handler.setFormatter(formatter)


@pytest.mark.usefixtures("root_logging")
def test_api_log_lines_carry_the_request_id(db_url: str) -> None:
    config = {
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "DATABASE_URL": db_url,
        "LOG_JSON": 1,  # what ROUTER_LOG_JSON=1 becomes
    }
    gunicorn_handler = logging.StreamHandler(io.StringIO())
    logging.getLogger("gunicorn.error").addHandler(gunicorn_handler)
    app: Flask = create_app(config)
    logging_json.init_app(app)
    logging_json.init_app(app)  # idempotent: still one handler
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_router_json", False)]
    assert len(ours) == 1 and isinstance(ours[0], logging.StreamHandler)
    stream = io.StringIO()
    ours[0].setStream(stream)  # type: ignore[attr-defined]

    @app.get("/_log_probe")
    def probe() -> str:
        logging.getLogger("api.probe").info("probing %d", 42)
        return "ok"

    resp = app.test_client().get("/_log_probe", headers={"x-request-id": "req_probe_1"})
    assert resp.status_code == 200
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    [probe_line] = [x for x in lines if x["logger"] == "api.probe"]
    assert probe_line["message"] == "probing 42" and probe_line["request_id"] == "req_probe_1"
    assert current_request_id() is None  # unbound after the request
    assert isinstance(gunicorn_handler.formatter, JsonFormatter)


def test_celery_workers_switch_to_json_only_when_asked() -> None:
    logger = logging.getLogger("test.celery.json")
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    try:
        celery_json_logging(logger=logger, env={})
        assert not isinstance(handler.formatter, JsonFormatter)
        celery_json_logging(logger=logger, env={"ROUTER_LOG_JSON": "1"})
        assert isinstance(handler.formatter, JsonFormatter)
    finally:
        logger.removeHandler(handler)


def test_celery_task_signals_bind_the_job_then_forget_it() -> None:
    task_log_context_begin(sender=None, task_id="celery-id", args=("job_abc", 1), kwargs={})
    set_request_id("req_from_job")  # what run_job does once it has read the job
    body = orjson.loads(JsonFormatter().format(record()))
    assert (body["job_id"], body["request_id"]) == ("job_abc", "req_from_job")
    task_log_context_end(sender=None, task_id="celery-id")
    assert (current_job_id(), current_request_id()) == (None, None)
