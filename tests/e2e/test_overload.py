"""Overload and departed clients, through the real stack: a gevent provider worker with two
slots in front of a fake upstream whose latency each test sets.

- A request past the queue's limit, or one that could not start within the time the client
  says it will wait, is refused at once with 503 and Retry-After, never left to time out.
- A client that hangs up, before the first byte or mid-stream, cancels its job: the job
  ends `cancelled` within a second, and the worker's slot is free again.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest
import redis as redis_lib

from tasks import keys
from tasks.keys import JobStatus
from tasks.liveness import Liveness
from tests.conftest import Stack, Worker, wait_until
from tests.fakes.openai_api import SLOW, OpenAIFake, start_openai_fake

MODEL, QUEUE = "grok-3-mini", "grok"
LIMIT = 3  # ROUTER_QUEUE_LIMIT of this module's API


@dataclass
class Slow:
    api: str
    fake: OpenAIFake
    worker: Worker
    stack: Stack


@pytest.fixture(scope="module")
def slow(stack: Stack, start_worker, start_api) -> Iterator[Slow]:  # type: ignore[no-untyped-def]
    stack.redis().delete(QUEUE, keys.queued_key(QUEUE))
    fake = start_openai_fake({MODEL: None})
    env = {"XAI_API_KEY": "sk-test", "XAI_BASE_URL": fake.url + "/v1"}
    worker = start_worker(QUEUE, concurrency=2, **env)
    api = start_api(
        "api-overload",
        DATABASE_URL=f"sqlite:///{stack.tmp / 'overload.db'}",
        XAI_API_KEY="set-on-the-workers-only",
        ROUTER_QUEUE_LIMIT=str(LIMIT),
    )
    yield Slow(api, fake, worker, stack)
    fake.latency = 0
    worker.stop()
    fake.stop()


@pytest.fixture(autouse=True)
def _idle(slow: Slow) -> Iterator[None]:
    """Each test starts with nothing running or waiting, and leaves it so."""
    yield
    slow.fake.latency = 0
    wait_until(lambda: running(slow) == 0 and waiting(slow) == 0, 30, "an idle queue")


def body(text: str = "Hi", **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def running(slow: Slow) -> int:
    """Jobs the worker says it is running (its last heartbeat)."""
    found = [w for w in Liveness(slow.stack.redis()).workers() if QUEUE in w.get("queues", "")]
    return sum(int(w.get("active", 0)) for w in found)


def waiting(slow: Slow) -> int:
    return int(slow.stack.redis().zcard(keys.queued_key(QUEUE)))


def job_of(r: redis_lib.Redis, request_id: str) -> str | None:
    """The job a request made (found by the request id it carries)."""
    for key in r.scan_iter(match="router:job:job_*", count=1000):
        if key.endswith(":events"):
            continue
        request = r.hget(key, "request")
        if request and orjson.loads(request).get("request_id") == request_id:
            return key.removeprefix("router:job:")
    return None


def post(slow: Slow, payload: dict[str, object], **headers: str) -> tuple[int, dict, float]:
    t0 = time.monotonic()
    resp = httpx.post(f"{slow.api}/v1/chat/completions", json=payload, headers=headers, timeout=60)
    return resp.status_code, {**resp.headers, "body": resp.json()}, time.monotonic() - t0


# -- refused fast ---------------------------------------------------------------------------


def test_requests_past_the_queue_limit_are_refused_at_once(slow: Slow) -> None:
    slow.fake.latency = 3.0
    results: list[tuple[int, dict, float]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        got = post(slow, body(f"request {i}"))
        with lock:
            results.append(got)

    def upstream_calls() -> int:
        return sum(slow.fake.authorizations.values())

    before = upstream_calls()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(LIMIT + 12)]
    for t in threads[:2]:  # fill the worker's two slots first, however slow it is to claim
        t.start()
    wait_until(lambda: upstream_calls() >= before + 2, 20, "both slots busy upstream")
    for t in threads[2:]:  # then LIMIT more wait in the queue, the other 10 are refused
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    # a few more than LIMIT may wait when a slot freed meanwhile
    assert len(ok) >= 2 + LIMIT and len(refused) >= 10 - 2
    for code, headers, took in refused:
        assert code == 503 and headers["body"]["error"]["code"] == "queue_full"
        assert int(headers["retry-after"]) >= 1
        assert took < 2.0, f"refused after {took:.2f}s"  # at once, not after a timeout
    assert all(took >= 2.5 for _, _, took in ok)  # they did wait for the slow upstream


def test_a_request_that_could_not_finish_in_its_clients_time_is_refused(slow: Slow) -> None:
    slow.fake.latency = 4.0
    assert post(slow, body("learn the service time"))[0] == 200  # one outcome: ~4 s per job
    busy = [threading.Thread(target=post, args=(slow, body(f"busy {i}"))) for i in range(4)]
    for t in busy:
        t.start()
    wait_until(lambda: waiting(slow) >= 2, 30, "two jobs waiting")
    time.sleep(0.6)  # the API's view of the queue is at most half a second old
    # 2 waiting x 4 s / 2 slots = 4 s before a slot, then 4 s of work: 8 s in all
    code, headers, took = post(slow, body("in a hurry"), **{"x-request-timeout": "5"})
    assert code == 503 and headers["body"]["error"]["code"] == "overloaded"
    assert int(headers["retry-after"]) >= 1 and took < 2.0
    code, _, _ = post(slow, body("patient"), **{"x-request-timeout": "60"})
    assert code == 200
    for t in busy:
        t.join()


# -- departed clients -----------------------------------------------------------------------


def raw_request(api: str, payload: dict[str, object], request_id: str) -> socket.socket:
    """Send a request on a plain socket (so the test decides when to hang up)."""
    data = orjson.dumps(payload)
    host, port = api.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        f"x-request-id: {request_id}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_hangs_up_before_the_first_byte_cancels_its_job(
    slow: Slow, stream: bool
) -> None:
    slow.fake.latency = 20.0  # the upstream would keep the job busy for 20 s
    rid = f"hangup-{uuid.uuid4().hex[:8]}"
    sock = raw_request(slow.api, body("wait for me", stream=stream), rid)
    wait_until(lambda: running(slow) == 1, 10, "the job running on the worker")
    job_id = job_of(slow.stack.redis(), rid)
    assert job_id is not None and status_of(slow.stack.redis(), job_id) == "running"
    sock.close()  # the client gives up before any byte came back
    gone = time.monotonic()
    r = slow.stack.redis()
    wait_until(lambda: status_of(r, job_id) == JobStatus.CANCELLED, 5, "the cancelled job")
    took = time.monotonic() - gone
    assert took < 1.0, f"cancelled {took:.2f}s after the client left"
    wait_until(lambda: running(slow) == 0, 5, "the worker's slot freed")


def test_a_client_that_hangs_up_mid_stream_cancels_its_job(slow: Slow) -> None:
    slow.fake.stream_closed.clear()
    rid = f"midstream-{uuid.uuid4().hex[:8]}"
    sock = raw_request(slow.api, body(f"{SLOW} please", stream=True), rid)  # 1000 chunks, 20 ms
    seen = b""
    while seen.count(b"tick") < 3:
        seen += sock.recv(4096)
    job_id = job_of(slow.stack.redis(), rid)
    assert job_id is not None and status_of(slow.stack.redis(), job_id) == "running"
    sock.close()
    gone = time.monotonic()
    r = slow.stack.redis()
    wait_until(lambda: status_of(r, job_id) == JobStatus.CANCELLED, 5, "the cancelled job")
    took = time.monotonic() - gone
    assert took < 1.0, f"cancelled {took:.2f}s after the client left"
    assert slow.fake.stream_closed.wait(5)  # the upstream request was closed too
    assert slow.fake.slow_served < 1000
    wait_until(lambda: running(slow) == 0, 5, "the worker's slot freed")


def test_a_local_job_is_stopped_before_its_first_token(api_url: str, stack: Stack) -> None:
    """A long prompt keeps the local model prefilling: the client that leaves meanwhile
    cancels the job at once, not after the prefill and a first token."""
    r = stack.redis()
    rid = f"prefill-{uuid.uuid4().hex[:8]}"
    prompt = "Summarise the following. " + "The quick brown fox jumps over the dog. " * 250
    payload = {"model": "smollm2-135m", "messages": [{"role": "user", "content": prompt}]}
    sock = raw_request(api_url, payload, rid)
    wait_until(lambda: job_of(r, rid) is not None, 10, "the job")
    job_id = job_of(r, rid)
    assert job_id is not None
    wait_until(lambda: status_of(r, job_id) == "running", 10, "the job claimed")
    sock.close()
    gone = time.monotonic()
    wait_until(lambda: status_of(r, job_id) == JobStatus.CANCELLED, 5, "the cancelled job")
    assert time.monotonic() - gone < 1.0
    events = [f["type"] for _, f in r.xrange(keys.events_key(job_id))]
    assert events == ["cancelled"]  # stopped before its first token


def status_of(r: redis_lib.Redis, job_id: str) -> str:
    return str(r.hget(keys.job_key(job_id), "status"))
