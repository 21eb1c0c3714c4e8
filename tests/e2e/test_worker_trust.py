"""Real provider workers (gevent, as `make run` starts them) against jobs written straight
into Redis, as anyone with access to it could: a worker reads no variable and calls no URL
that its own configuration does not name, and fails such a job clearly; requests that crash
a worker's translator never open their backend's circuit (only the upstream's failures do);
and a worker whose event publisher dies exits non-zero, saying why, instead of heartbeating
on while every job it claims hangs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tasks import keys
from tasks.dispatch import enqueue, task_message
from tasks.health import BackendHealth, BreakerPolicy
from tasks.jobs import JobStore
from tasks.keys import JobStatus
from tests.conftest import Stack, Worker, wait_until
from tests.fakes import anthropic_api
from tests.fakes.openai_api import OpenAIFake, start_openai_fake
from workers.protocol import ChatJob

SECRET = f"aws-secret-{uuid.uuid4().hex}"  # in the worker's environment, for nobody


@pytest.fixture(scope="module")
def bait() -> Iterator[OpenAIFake]:
    """Where a crafted job points the worker: it must never be called."""
    fake = start_openai_fake()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def openai_worker(start_worker: Callable[..., Worker]) -> Iterator[Worker]:
    """A worker on the `openai` queue holding an unrelated secret; no OPENAI_BASE_URL, so
    that nothing but its own configuration stands between a crafted job and the bait."""
    worker = start_worker("openai", concurrency=10, SOME_SECRET=SECRET)
    yield worker
    worker.stop()


def crafted(**fields: Any) -> ChatJob:
    """A job for the `openai` backend unless `fields` say otherwise."""
    job: dict[str, Any] = {
        "id": f"job_{uuid.uuid4().hex}",
        "model": "gpt-4o-mini",
        "backend": "openai",
        "kind": "openai-compatible",
        "upstream_model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "deadline": time.time() + 60,
    }
    return ChatJob(**{**job, **fields})


def push(stack: Stack, job: ChatJob, queue: str) -> JobStore:
    """Write the job and its task message into Redis, as the API would."""
    store = JobStore(stack.redis())
    store.create(job, queue, message=task_message(job.id, 1, queue))
    return store


def wait_for_end(store: JobStore, job_id: str, timeout: float = 30) -> Any:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        snap = store.snapshot(job_id)
        if snap and snap[0].status.terminal:
            return snap
        time.sleep(0.05)
    pytest.fail(f"job {job_id} did not end within {timeout}s")


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({}, "key_env_not_allowed"),  # the worker's own kind and backend; a foreign variable
        ({"kind": "llm-d", "backend": "llm-d"}, "job_refused"),  # another kind on the queue
    ],
    ids=["foreign-key-variable", "foreign-kind"],
)
def test_a_crafted_job_never_sends_a_secret_anywhere(
    stack: Stack, openai_worker: Worker, bait: OpenAIFake, changes: dict[str, str], code: str
) -> None:
    bait.reset()
    job = crafted(base_url=bait.url + "/v1", api_key_env="SOME_SECRET", **changes)
    store = push(stack, job, "openai")
    record, transcript = wait_for_end(store, job.id)
    assert record.status is JobStatus.FAILED
    error = transcript.final.error
    assert error.code == code, error
    assert SECRET not in error.message
    time.sleep(0.2)
    assert bait.requests == [], "the worker called the URL a job gave it"
    assert SECRET not in openai_worker.log.read_text()


def test_requests_that_crash_the_translator_never_open_the_circuit(
    stack: Stack, start_worker: Callable[..., Worker]
) -> None:
    """Five jobs whose messages make workers/anthropic_translate.py raise TypeError fail
    with `worker_error` and leave the circuit closed (the default policy opens it after
    five failures in a row); five 503s from the upstream then open it, and only those
    five are on the backend's record."""
    upstream = anthropic_api.start_anthropic_fake()
    worker = start_worker(
        "anthropic",
        concurrency=4,
        ANTHROPIC_BASE_URL=upstream.url,
        ANTHROPIC_API_KEY="sk-ant-test-0123456789",
        ROUTER_UPSTREAM_RETRIES="0",
    )
    r = stack.redis()
    r.delete(*(key("anthropic") for key in (keys.circuit_key, keys.outcomes_key, keys.probe_key)))
    health = BackendHealth(r, BreakerPolicy())

    def run(messages: list[Any]) -> Any:
        job = crafted(backend="anthropic", kind="anthropic", messages=messages)
        store = push(stack, job, "anthropic")
        return wait_for_end(store, job.id)[1].final.error

    try:
        for _ in range(5):
            error = run([{"role": "user", "content": 5}])  # not iterable: a TypeError
            assert error.code == "worker_error", error
        assert upstream.requests == []
        time.sleep(0.3)  # a recorded outcome would follow the job's end within milliseconds
        assert health.states(["anthropic"]) == {"anthropic": "closed"}

        upstream.fail_next(*[anthropic_api.error_reply(503, "api_error", "down")] * 5)
        for _ in range(5):
            assert run([{"role": "user", "content": "hi"}]).status == 503
        wait_until(lambda: health.states(["anthropic"])["anthropic"] == "open", 5, "open")
        assert r.llen(keys.outcomes_key("anthropic")) == 5, "a crash was counted"
    finally:
        worker.stop()
        upstream.stop()
        r.delete(*(key("anthropic") for key in (keys.circuit_key, keys.outcomes_key)))


def test_a_worker_whose_publisher_dies_exits_and_says_why(
    stack: Stack, start_worker: Callable[..., Worker]
) -> None:
    from tasks.runtime import EXIT_THREAD_DIED

    upstream = start_openai_fake()
    worker = start_worker(
        "venice",
        concurrency=4,
        VENICE_BASE_URL=upstream.url + "/v1",
        VENICE_API_KEY="venice-key-0123456789",
    )
    job = crafted(backend="venice", api_key_env="VENICE_API_KEY")
    store = JobStore(stack.redis())
    store.create(job, "venice")
    # a cancel flag no decoding client can read: the publisher's first flush of this job's
    # tokens (which reads the flag back) raises, and the publisher thread dies
    raw = redis.Redis.from_url(stack.redis_url)
    raw.hset(keys.job_key(job.id), "cancel", b"\xff")
    enqueue(stack.redis(), job.id, 1, "venice")
    try:
        status = worker.proc.wait(timeout=30)
        log = worker.log.read_text()
        assert status == EXIT_THREAD_DIED, log[-3000:]
        assert "event-publisher died" in log and "UnicodeDecodeError" in log
    finally:
        worker.stop()
        upstream.stop()
        # nothing may pick the poisoned job up again once this worker's heartbeat expires
        raw.delete(keys.job_key(job.id), keys.events_key(job.id))
