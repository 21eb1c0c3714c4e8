"""Every completion is recorded once, through the real stack: gunicorn with two gevent
workers (metrics summed through PROMETHEUS_MULTIPROC_DIR), the real queue and local model,
the `openai` SDK as the client of chat completions. Records are read back from `/metrics`
and from the request log in the registry database.

The model asked for is one this module adds (with list prices, so cost is checked too):
other API processes of the session share the Redis and may adopt ledgers left by processes
that died in other tests, but never record this model.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from simple_websocket import Client as WsClient
from sqlalchemy import Engine

from registry.crud import add_backend, add_model
from registry.db import init_db, make_engine
from registry.requestlog import LogEntry, cost_usd, recent_entries
from tests.conftest import Stack, wait_until
from tests.e2e.test_jobs import poll
from tests.e2e.test_web_surface import close, messages

PRICED = "acct-smol"  # the local model, under list prices: USD per 1M tokens
INPUT_PRICE, OUTPUT_PRICE = 1000.0, 2000.0
PRIMARY = "acct-nowhere"  # served by a queue no worker consumes: falls back to PRICED
ASK = [{"role": "user", "content": "What is the capital of France?"}]
SHORT = {"model": PRICED, "messages": ASK, "max_tokens": 16, "temperature": 0}
LONG = {
    "model": PRICED,
    "messages": [{"role": "user", "content": "Write a long poem about the sea and the sky."}],
    "max_tokens": 300,
    "temperature": 0,
}


@dataclass
class Api:
    url: str
    engine: Engine
    db_url: str


@pytest.fixture(scope="module")
def acct(stack: Stack, start_api: Callable[..., str], worker: Any) -> Api:
    """An API on a registry of its own that prices the local model, with shared metrics."""
    db_url = f"sqlite:///{stack.tmp / 'accounting.db'}"
    engine = make_engine(db_url)
    init_db(engine, stack.env)
    add_model(
        engine,
        PRICED,
        "local",
        upstream="smollm2-135m",
        input_price=INPUT_PRICE,
        output_price=OUTPUT_PRICE,
    )
    add_backend(engine, "acct-nowhere", "local", "acct-nowhere-q")
    add_model(engine, PRIMARY, "acct-nowhere", upstream="smollm2-135m", fallbacks=[PRICED])
    metrics_dir = stack.tmp / "accounting-metrics"
    metrics_dir.mkdir()
    url = start_api(
        "api-accounting", DATABASE_URL=db_url, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)
    )
    return Api(url, engine, db_url)


@pytest.fixture
def http(acct: Api) -> Any:
    with httpx.Client(base_url=acct.url, timeout=120) as client:
        yield client


@pytest.fixture
def openai_sdk(acct: Api) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=acct.url + "/v1", api_key="none", max_retries=0, timeout=120)


def rid() -> str:
    return f"req_acct_{uuid.uuid4().hex[:12]}"


def counted(api: Api, name: str = "router_requests_total", **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`, over both workers."""
    text = httpx.get(api.url + "/metrics", timeout=10).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def logged(engine: Engine, **match: object) -> list[LogEntry]:
    """The request-log entries whose fields equal `match`."""
    return [
        e for e in recent_entries(engine, 5000) if all(getattr(e, k) == v for k, v in match.items())
    ]


def one_entry(engine: Engine, timeout: float = 60, **match: object) -> LogEntry:
    """The one entry matching, once it is written; then checks that no second one comes."""
    wait_until(lambda: logged(engine, **match), timeout, f"a request-log entry {match}")
    time.sleep(1.0)  # past the accountant's reads and the writer's flush: a double shows
    found = logged(engine, **match)
    assert len(found) == 1, found
    return found[0]


def cost(entry: LogEntry) -> float:
    return cost_usd(entry.prompt_tokens, entry.completion_tokens, INPUT_PRICE, OUTPUT_PRICE)


def post_job(http: httpx.Client, body: dict, request_id: str, **headers: str) -> httpx.Response:
    resp = http.post("/v1/jobs", json=body, headers={"x-request-id": request_id, **headers})
    assert resp.status_code == 202, resp.text
    return resp


# -- /v1/jobs -----------------------------------------------------------------------------


def test_a_job_nobody_reads_is_recorded_once_with_usage_and_cost(acct: Api, http) -> None:  # type: ignore[no-untyped-def]
    before = counted(acct, model=PRICED, status="200")
    request_id = rid()
    job_id = post_job(http, SHORT, request_id).json()["id"]
    entry = one_entry(acct.engine, request_id=request_id)
    assert (entry.job_id, entry.status, entry.model, entry.backend) == (
        job_id,
        "200",
        PRICED,
        "local",
    )
    assert entry.prompt_tokens > 0 and 0 < entry.completion_tokens <= 16
    assert entry.cost_usd == pytest.approx(cost(entry)) and entry.cost_usd > 0
    assert entry.ttft_ms is not None and entry.ttft_ms <= entry.latency_ms
    assert entry.fallback is None
    assert counted(acct, model=PRICED, status="200") - before == 1
    tokens = counted(acct, "router_completion_tokens_total", model=PRICED)
    assert tokens >= entry.completion_tokens
    result = http.get(f"/v1/jobs/{job_id}").json()["result"]
    assert result["usage"]["completion_tokens"] == entry.completion_tokens


def test_a_job_polled_and_followed_by_several_readers_is_recorded_once(
    acct: Api, http: httpx.Client
) -> None:
    before = counted(acct, model=PRICED)
    request_id = rid()
    job_id = post_job(http, SHORT, request_id).json()["id"]
    ends: list[str] = []

    def follow_sse() -> None:
        with (
            httpx.Client(base_url=acct.url, timeout=120) as c,
            c.stream("GET", f"/v1/jobs/{job_id}/events") as resp,
        ):
            lines = [line for line in resp.iter_lines() if line.startswith("event:")]
            ends.append(lines[-1])

    def follow_ws() -> None:
        ws = WsClient.connect(acct.url.replace("http", "ws") + f"/v1/jobs/{job_id}/ws")
        try:
            ends.append(messages(ws, {"done", "error", "cancelled"})[-1]["type"])
        finally:
            close(ws)

    readers = [threading.Thread(target=f) for f in (follow_sse, follow_sse, follow_ws)]
    for t in readers:
        t.start()
    job = poll(http, job_id, {"succeeded"})
    for _ in range(5):
        assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
    for t in readers:
        t.join(60)
    assert sorted(ends) == ["done", "event: done", "event: done"]
    entry = one_entry(acct.engine, request_id=request_id)
    assert entry.job_id == job_id
    assert entry.completion_tokens == job["result"]["usage"]["completion_tokens"]
    assert counted(acct, model=PRICED) - before == 1


def test_an_idempotent_replay_is_not_recorded_again(acct: Api, http: httpx.Client) -> None:
    before = counted(acct, model=PRICED)
    key = f"acct-{uuid.uuid4().hex[:8]}"
    first, replay = rid(), rid()
    job_id = post_job(http, SHORT, first, **{"Idempotency-Key": key}).json()["id"]
    again = post_job(http, SHORT, replay, **{"Idempotency-Key": key})
    assert again.headers["Idempotent-Replayed"] == "true" and again.json()["id"] == job_id
    assert one_entry(acct.engine, request_id=first).job_id == job_id
    assert logged(acct.engine, request_id=replay) == []
    assert counted(acct, model=PRICED) - before == 1


def test_a_cancelled_job_is_recorded_once_as_499(acct: Api, http: httpx.Client) -> None:
    before = counted(acct, model=PRICED, status="499")
    request_id = rid()
    job_id = post_job(http, LONG, request_id).json()["id"]
    give_up = time.monotonic() + 60
    while not http.get(f"/v1/jobs/{job_id}").json()["text"]:
        assert time.monotonic() < give_up
        time.sleep(0.05)
    assert http.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    entry = one_entry(acct.engine, request_id=request_id)
    assert (entry.job_id, entry.status) == (job_id, "499")
    assert entry.ttft_ms is not None
    assert counted(acct, model=PRICED, status="499") - before == 1


def test_a_refused_job_is_recorded(acct: Api, http: httpx.Client) -> None:
    request_id = rid()
    body = {**SHORT, "model": "acct-no-such-model"}
    resp = http.post("/v1/jobs", json=body, headers={"x-request-id": request_id})
    assert resp.status_code == 404
    entry = one_entry(acct.engine, request_id=request_id)
    assert (entry.status, entry.model, entry.backend, entry.job_id) == (
        "404",
        "unknown",
        "none",
        None,
    )


# -- chat completions and the WebSocket ---------------------------------------------------


def test_json_sse_and_websocket_completions_are_recorded_with_usage(
    acct: Api, openai_sdk: Any
) -> None:
    before = counted(acct, model=PRICED, status="200")
    plain_id, stream_id = rid(), rid()
    plain = openai_sdk.chat.completions.with_raw_response.create(
        **SHORT, extra_headers={"x-request-id": plain_id}
    )
    answer = plain.parse()
    entry = one_entry(acct.engine, request_id=plain_id)
    assert entry.job_id == plain.headers["x-router-job-id"]
    assert (entry.prompt_tokens, entry.completion_tokens) == (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
    )
    assert entry.cost_usd == pytest.approx(cost(entry))

    chunks = list(
        openai_sdk.chat.completions.create(
            **SHORT,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-request-id": stream_id},
        )
    )
    usage = chunks[-1].usage
    entry = one_entry(acct.engine, request_id=stream_id)
    assert entry.status == "200" and entry.ttft_ms is not None
    assert (entry.prompt_tokens, entry.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )

    ws = WsClient.connect(acct.url.replace("http", "ws") + "/v1/ws")
    try:
        ws.send(orjson.dumps(SHORT).decode())
        msgs = messages(ws, {"done", "error"})
    finally:
        close(ws)
    assert msgs[-1]["type"] == "done"
    entry = one_entry(acct.engine, job_id=msgs[0]["id"])
    assert entry.status == "200" and entry.ttft_ms is not None
    assert entry.completion_tokens == msgs[-1]["usage"]["completion_tokens"]
    assert counted(acct, model=PRICED, status="200") - before == 3


def test_a_client_that_leaves_mid_stream_is_recorded_once_as_499(
    acct: Api, openai_sdk: Any
) -> None:
    request_id = rid()
    stream = openai_sdk.chat.completions.create(
        **LONG, stream=True, extra_headers={"x-request-id": request_id}
    )
    for n, _ in enumerate(stream):
        if n == 3:
            break
    stream.close()  # the client goes away mid-answer; its job is cancelled
    entry = one_entry(acct.engine, request_id=request_id)
    assert entry.status == "499" and entry.ttft_ms is not None
    assert entry.latency_ms >= entry.ttft_ms
    # billed for what it used: the tokens streamed before the cancel, and its prompt
    assert entry.completion_tokens >= 3 and entry.prompt_tokens > 0
    assert entry.cost_usd == pytest.approx(cost(entry)) and entry.cost_usd > 0


def test_a_websocket_that_drops_mid_answer_is_recorded_once_as_499(acct: Api) -> None:
    ws = WsClient.connect(acct.url.replace("http", "ws") + "/v1/ws")
    ws.send(orjson.dumps(LONG).decode())
    msgs = messages(ws, {"token"})
    close(ws)
    entry = one_entry(acct.engine, job_id=msgs[0]["id"])
    assert entry.status == "499" and entry.ttft_ms is not None
    assert entry.completion_tokens >= 1 and entry.prompt_tokens > 0 and entry.cost_usd > 0


def test_a_fallback_answer_is_recorded_under_the_model_asked_for(
    acct: Api, openai_sdk: Any
) -> None:
    before = counted(acct, "router_fallbacks_total", model=PRIMARY, fallback=PRICED)
    request_id = rid()
    answer = openai_sdk.chat.completions.create(
        **{**SHORT, "model": PRIMARY}, extra_headers={"x-request-id": request_id}
    )
    assert answer.model == PRICED
    entry = one_entry(acct.engine, request_id=request_id)
    assert (entry.model, entry.fallback, entry.backend, entry.status) == (
        PRIMARY,
        PRICED,
        "local",
        "200",
    )
    assert entry.cost_usd == pytest.approx(cost(entry)) and entry.cost_usd > 0
    after = counted(acct, "router_fallbacks_total", model=PRIMARY, fallback=PRICED)
    assert after - before == 1


# -- an API process that dies -------------------------------------------------------------


def every_log(stack: Stack, **match: object) -> list[LogEntry]:
    """Matching entries in every registry of the session: whichever API process adopts a
    ledger records into its own registry."""
    found: list[LogEntry] = []
    for path in sorted(Path(stack.tmp).glob("*.db")):
        engine = make_engine(f"sqlite:///{path}")
        with contextlib.suppress(Exception):  # a registry without the table yet
            found += logged(engine, **match)
        engine.dispose()
    return found


def test_the_jobs_of_an_api_process_that_dies_are_recorded_by_another(
    acct: Api, stack: Stack, start_api: Callable[..., str]
) -> None:
    doomed = start_api("api-accounting-doomed", DATABASE_URL=acct.db_url)
    proc = stack.procs[-1]
    request_id = rid()
    with httpx.Client(base_url=doomed, timeout=60) as c:
        job_id = post_job(c, {**LONG, "max_tokens": 120}, request_id).json()["id"]
    r = stack.redis()
    wait_until(
        lambda: any(
            r.hexists(f"router:accounting:{api}", job_id)
            for api in r.smembers("router:accounting:apis")
        ),
        10,
        "the job in its API process's ledger",
    )
    for child in psutil.Process(proc.pid).children(recursive=True):
        os.kill(child.pid, signal.SIGKILL)  # a crash: no exit hook runs
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    wait_until(lambda: every_log(stack, request_id=request_id), 90, "the adopted job's record")
    time.sleep(2)
    [entry] = every_log(stack, request_id=request_id)
    assert (entry.job_id, entry.status, entry.model) == (job_id, "200", PRICED)
    assert 0 < entry.completion_tokens <= 120
    assert entry.ttft_ms is None  # not watched live by the process that recorded it
    assert entry.cost_usd == pytest.approx(cost(entry))
