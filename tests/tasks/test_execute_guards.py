"""run_job against a real Redis when a job is not what it should be, or its backend is not
well: a request another version wrote, a job of another kind than its queue, failures of
ours against failures of the upstream, and upstreams that keep a job alive past its
deadline or its cancel with nothing but keep-alives."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

import tasks.runtime
from core.settings import Settings
from tasks import keys
from tasks.execute import run_job
from tasks.keys import Event, JobStatus
from tasks.runtime import WorkerRuntime
from tests.fakes.openai_api import OpenAIFake, start_openai_fake
from tests.fakes.server import Reply
from workers.errors import InvalidRequestError, RouterError
from workers.protocol import ChatJob, Chunk, Done, Usage
from workers.upstream import status_error

#: The test queue `q` serves the scripted backends below (an operator-added queue's kind).
ENV = {"Q_KIND": "scripted", "ROUTER_BREAKER_FAILURES": "2", "ROUTER_BREAKER_MIN_REQUESTS": "99"}


class Scripted:
    """Answers "ok", or raises `fail` before any chunk; counts its calls."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail, self.calls = fail, 0

    def stream(self, job: ChatJob) -> Iterator[Chunk | Done]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        yield Chunk("ok")
        yield Done("stop", Usage(1, 1))


class Silent:
    """Says nothing until its job is cancelled through `cancel` (as the local engine)."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def stream(self, job: ChatJob) -> Iterator[Chunk | Done]:
        self.cancelled.wait(30)
        yield Done("stop", Usage(1, 0))

    def cancel(self, job_id: str) -> bool:
        self.cancelled.set()
        return True


@pytest.fixture
def rt(stack, r) -> Iterator[WorkerRuntime]:  # type: ignore[no-untyped-def]
    url = stack.redis_url.rsplit("/", 1)[0] + "/5"
    runtime = WorkerRuntime(Settings.load(ENV, {"REDIS_URL": url, "JOB_TTL": 60}), ENV)
    yield runtime
    runtime.stop()


def use(monkeypatch: pytest.MonkeyPatch, backend: Any) -> None:
    monkeypatch.setattr(tasks.runtime, "create_backend", lambda kind, env, *_: backend)


def submit(rt: WorkerRuntime, make_job: Callable[..., ChatJob], queue: str = "q", **kw: Any) -> str:
    job = ChatJob.from_dict({**make_job().to_dict(), "kind": "scripted", "backend": queue, **kw})
    rt.jobs.create(job, queue)
    return job.id


def final(rt: WorkerRuntime, job_id: str) -> tuple[JobStatus, Any]:
    snap = rt.jobs.snapshot(job_id)
    assert snap is not None
    return snap[0].status, snap[1].final


def drain(rt: WorkerRuntime) -> None:
    """Wait until everything queued on the publisher so far is written."""
    done = threading.Event()
    rt.publisher.call("drain", lambda pipe: pipe.ping(), lambda _: done.set())
    assert done.wait(5)


# -- requests written by another version ---------------------------------------------------
def test_a_request_with_fields_this_worker_does_not_know_still_runs(
    rt: WorkerRuntime, make_job: Callable[..., ChatJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, Scripted())
    job_id = submit(rt, make_job)
    request = orjson.loads(rt.redis.hget(keys.job_key(job_id), "request"))  # type: ignore[arg-type]
    request["reasoning_budget"] = 512  # a field a newer API adds
    request["sampling"]["min_p"] = 0.1
    rt.redis.hset(keys.job_key(job_id), "request", orjson.dumps(request).decode())
    run_job(rt, job_id, 1)
    assert final(rt, job_id)[0] is JobStatus.SUCCEEDED


@pytest.mark.parametrize(
    "request_json",
    ['{"id": "job_1", "model": "m"', '{"id": "job_1", "model": "m"}', "[1, 2]", '{"sampling": 3}'],
    ids=["not-json", "missing-fields", "not-an-object", "bad-sampling"],
)
def test_a_request_that_does_not_decode_fails_its_job_at_once(
    rt: WorkerRuntime,
    make_job: Callable[..., ChatJob],
    monkeypatch: pytest.MonkeyPatch,
    request_json: str,
) -> None:
    backend = Scripted()
    use(monkeypatch, backend)
    job_id = submit(rt, make_job)
    rt.redis.hset(keys.job_key(job_id), "request", request_json)
    run_job(rt, job_id, 1)
    status, event = final(rt, job_id)
    assert status is JobStatus.FAILED  # not `running` until its deadline
    assert event.type is Event.ERROR and event.error.code == "job_unreadable"
    assert backend.calls == 0 and not rt.redis.smembers(keys.worker_jobs_key(rt.worker_id))


# -- jobs that are not this worker's -------------------------------------------------------
def test_a_job_of_another_kind_than_its_queue_is_refused(
    rt: WorkerRuntime, make_job: Callable[..., ChatJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = Scripted()
    use(monkeypatch, backend)
    # written straight into Redis: an OpenAI-compatible job, aimed anywhere, on a queue
    # whose worker runs something else
    job_id = submit(rt, make_job, kind="openai-compatible", base_url="http://127.0.0.1:9/v1")
    run_job(rt, job_id, 1)
    status, event = final(rt, job_id)
    assert status is JobStatus.FAILED
    assert event.error.code == "job_refused" and "openai-compatible" in event.error.message
    assert backend.calls == 0


def test_a_job_on_a_queue_this_worker_does_not_serve_or_for_another_backend_is_refused(
    rt: WorkerRuntime, make_job: Callable[..., ChatJob]
) -> None:
    rt.served = {"openai": "openai-compatible"}  # as `prepare` sets it for -Q openai
    stray = submit(rt, make_job, kind="anthropic", backend="anthropic", queue="anthropic")
    other = submit(
        rt, make_job, id="job_2", kind="openai-compatible", backend="mine", queue="openai"
    )
    for job_id, why in ((stray, "does not serve queue `anthropic`"), (other, "backend `mine`")):
        run_job(rt, job_id, 1)
        status, event = final(rt, job_id)
        assert status is JobStatus.FAILED and event.error.code == "job_refused"
        assert why in event.error.message


# -- what counts against a backend ---------------------------------------------------------
@pytest.mark.parametrize(
    "fail",
    [
        TypeError("a bug of ours"),
        RouterError("could not translate the request", code="translation_error"),
        InvalidRequestError("bad tool schema", param="tools"),
    ],
    ids=["bug", "local-500", "client-400"],
)
def test_failures_of_ours_never_open_the_circuit(
    rt: WorkerRuntime,
    make_job: Callable[..., ChatJob],
    monkeypatch: pytest.MonkeyPatch,
    fail: Exception,
) -> None:
    use(monkeypatch, Scripted(fail))
    for n in range(4):
        run_job(rt, submit(rt, make_job, id=f"job_{n}"), 1)
    drain(rt)
    assert rt.health.states(["q"]) == {"q": "closed"}
    # nor are they counted as the backend's successes: the backend was never asked
    assert rt.redis.llen(keys.outcomes_key("q")) == 0


def test_an_upstream_refusing_the_request_counts_as_well(
    rt: WorkerRuntime, make_job: Callable[..., ChatJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, Scripted(status_error(400, "unknown field `foo`")))
    run_job(rt, submit(rt, make_job), 1)
    drain(rt)
    stats = rt.health.stats(["q"])["q"]
    assert (stats.requests, stats.error_rate, stats.state) == (1, 0.0, "closed")


def test_upstream_failures_open_the_circuit(
    rt: WorkerRuntime, make_job: Callable[..., ChatJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, Scripted(status_error(503, "the upstream is overloaded")))
    for n in range(2):
        run_job(rt, submit(rt, make_job, id=f"job_{n}"), 1)
    drain(rt)
    assert rt.health.states(["q"]) == {"q": "open"}


# -- deadlines and cancels while a backend says nothing --------------------------------------
def test_a_silent_job_is_stopped_at_its_deadline(
    rt: WorkerRuntime, make_job: Callable[..., ChatJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = Silent()
    use(monkeypatch, backend)
    job_id = submit(rt, make_job, deadline=time.time() + 1.0)
    rt.start_stopper()
    runner = threading.Thread(target=run_job, args=(rt, job_id, 1))
    runner.start()
    runner.join(timeout=5)
    assert not runner.is_alive(), "a silent backend kept its job past the deadline"
    status, event = final(rt, job_id)
    assert status is JobStatus.FAILED and event.error.status == 504
    assert backend.cancelled.is_set()


@pytest.fixture
def keepalive_upstream() -> Iterator[OpenAIFake]:
    """An OpenAI-compatible upstream that answers every chat request with SSE comments only,
    as OpenRouter does while a model is queued, until the client leaves."""
    stop = threading.Event()

    def comments() -> Iterator[bytes]:
        while not stop.is_set():
            yield b": OPENROUTER PROCESSING\n\n"
            time.sleep(0.05)

    fake = start_openai_fake()
    fake.routes[("POST", "/v1/chat/completions")] = lambda req: Reply(
        chunks=comments(), content_type="text/event-stream"
    )
    yield fake
    stop.set()
    fake.stop()


@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_an_upstream_sending_only_keepalives_is_stopped(
    stack,  # type: ignore[no-untyped-def]
    r,  # type: ignore[no-untyped-def]
    make_job: Callable[..., ChatJob],
    keepalive_upstream: OpenAIFake,
    how: str,
) -> None:
    env = {
        "OPENROUTER_BASE_URL": keepalive_upstream.url + "/v1",
        "OPENROUTER_API_KEY": "or-key-0123456789",
    }
    url = stack.redis_url.rsplit("/", 1)[0] + "/5"
    rt = WorkerRuntime(Settings(redis_url=url, job_ttl=60), env)
    deadline = time.time() + (1.5 if how == "deadline" else 60)
    job = ChatJob.from_dict(
        {
            **make_job().to_dict(),
            "backend": "openrouter",
            "kind": "openai-compatible",
            "api_key_env": "OPENROUTER_API_KEY",
            "deadline": deadline,
        }
    )
    rt.jobs.create(job, "openrouter")
    if how == "cancel":
        rt.start_stopper()  # a thread pool: nothing can interrupt the read but the loop itself
    runner = threading.Thread(target=run_job, args=(rt, job.id, 1), daemon=True)
    runner.start()
    time.sleep(0.5)
    assert keepalive_upstream.requests, "the upstream was never called"
    if how == "cancel":
        rt.jobs.cancel(job.id)
    runner.join(timeout=4)
    rt.stop()
    assert not runner.is_alive(), f"keep-alives kept the job alive past its {how}"
    status, event = final(rt, job.id)
    if how == "deadline":
        assert status is JobStatus.FAILED and event.error.status == 504
    else:
        assert status is JobStatus.CANCELLED and event.type is Event.CANCELLED
