"""run_job end to end in-process: a real Redis, the real runtime and publisher, and small
scripted backends standing in for a model, to drive every ending of a job."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import tasks.runtime
from core.settings import Settings
from tasks.events import Transcript
from tasks.execute import run_job
from tasks.jobs import JobStore
from tasks.keys import Event, JobStatus
from tasks.runtime import WorkerRuntime
from workers.errors import InvalidRequestError, RouterError
from workers.protocol import ChatJob, Chunk, Done, Usage

#: The test queues serve the scripted backends (an operator-added queue's kind).
ENV = {"Q_KIND": "scripted", "QUANTUM_KIND": "quantum"}


class Scripted:
    """Yields the given pieces, one every `delay` seconds; records being closed."""

    def __init__(self, pieces: list[str], delay: float = 0.0, fail: Exception | None = None):
        self.pieces, self.delay, self.fail = pieces, delay, fail
        self.closed = threading.Event()

    def stream(self, job: ChatJob) -> Iterator[Chunk | Done]:
        try:
            for piece in self.pieces:
                time.sleep(self.delay)
                yield Chunk(piece)
            if self.fail:
                raise self.fail
            yield Done("stop", Usage(3, len(self.pieces)))
        finally:
            self.closed.set()


@pytest.fixture
def rt(stack, r, monkeypatch) -> WorkerRuntime:  # type: ignore[no-untyped-def]
    url = stack.redis_url.rsplit("/", 1)[0] + "/5"
    return WorkerRuntime(Settings(redis_url=url, job_ttl=60), ENV)


def use_backend(monkeypatch, backend: Scripted) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(tasks.runtime, "create_backend", lambda kind, env, *_: backend)


def submit(rt: WorkerRuntime, make_job, queue: str = "q", **changes) -> str:  # type: ignore[no-untyped-def]
    job = make_job()
    job = ChatJob.from_dict({**job.to_dict(), "kind": "scripted", "backend": queue, **changes})
    rt.jobs.create(job, queue)
    return job.id


def outcome(store: JobStore, job_id: str) -> tuple[JobStatus, Transcript]:
    snap = store.snapshot(job_id)
    assert snap is not None
    return snap[0].status, snap[1]


def test_tokens_then_done(rt, make_job, monkeypatch) -> None:
    use_backend(monkeypatch, Scripted(["Hel", "lo", "", "!"]))
    job_id = submit(rt, make_job)
    run_job(rt, job_id, 1)
    status, tr = outcome(rt.jobs, job_id)
    assert status is JobStatus.SUCCEEDED
    assert tr.text == "Hello!" and tr.final and tr.final.type is Event.DONE
    assert tr.final.usage == Usage(3, 4)
    assert job_id not in rt.running


def test_a_router_error_fails_the_job_with_its_status(rt, make_job, monkeypatch) -> None:
    use_backend(monkeypatch, Scripted(["a"], fail=InvalidRequestError("bad", param="x")))
    job_id = submit(rt, make_job)
    run_job(rt, job_id, 1)
    status, tr = outcome(rt.jobs, job_id)
    assert status is JobStatus.FAILED
    assert tr.final and tr.final.error and tr.final.error.status == 400
    assert tr.final.error.param == "x"


def test_a_crashing_backend_fails_the_job_and_the_worker_carries_on(
    rt, make_job, monkeypatch
) -> None:
    use_backend(monkeypatch, Scripted(["a"], fail=RuntimeError("segfault-ish")))
    job_id = submit(rt, make_job)
    run_job(rt, job_id, 1)
    status, tr = outcome(rt.jobs, job_id)
    assert status is JobStatus.FAILED
    assert tr.final and tr.final.error
    assert tr.final.error.code == "worker_error" and "segfault" not in tr.final.error.message
    use_backend(monkeypatch, Scripted(["ok"]))
    rt._backends.clear()
    second = submit(rt, make_job, id="job_2")
    run_job(rt, second, 1)
    assert outcome(rt.jobs, second)[0] is JobStatus.SUCCEEDED


def test_cancel_stops_generation_within_a_token(rt, make_job, monkeypatch) -> None:
    backend = Scripted([f"t{i} " for i in range(200)], delay=0.01)
    use_backend(monkeypatch, backend)
    job_id = submit(rt, make_job)
    runner = threading.Thread(target=run_job, args=(rt, job_id, 1))
    runner.start()
    while not rt.jobs.snapshot(job_id)[1].text:  # type: ignore[index]
        time.sleep(0.01)
    rt.jobs.cancel(job_id)
    runner.join(timeout=5)
    assert not runner.is_alive()
    assert backend.closed.is_set()  # the backend's generator was closed: device freed
    status, tr = outcome(rt.jobs, job_id)
    assert status is JobStatus.CANCELLED and tr.final and tr.final.type is Event.CANCELLED
    assert len(tr.parts) < 100
    # billed for what it used: its streamed tokens and its prompt (estimated)
    assert tr.final.usage and tr.final.usage.completion_tokens == len(tr.parts) >= 1
    assert tr.final.usage.prompt_tokens > 0


def test_an_expired_job_never_reaches_the_backend(rt, make_job, monkeypatch) -> None:
    backend = Scripted(["never"])
    use_backend(monkeypatch, backend)
    job_id = submit(rt, make_job, deadline=time.time() - 1)
    run_job(rt, job_id, 1)
    status, tr = outcome(rt.jobs, job_id)
    assert status is JobStatus.FAILED
    assert tr.final and tr.final.error and tr.final.error.status == 504
    assert not backend.closed.is_set()


def test_a_stream_that_ends_without_done_fails(rt, make_job, monkeypatch) -> None:
    class Truncated(Scripted):
        def stream(self, job: ChatJob) -> Iterator[Chunk | Done]:
            yield Chunk("half")

    use_backend(monkeypatch, Truncated([]))
    job_id = submit(rt, make_job)
    run_job(rt, job_id, 1)
    status, tr = outcome(rt.jobs, job_id)
    assert status is JobStatus.FAILED and tr.text == "half"


def test_unknown_backend_kind_fails_clearly(rt, make_job) -> None:
    job_id = submit(rt, make_job, queue="quantum", kind="quantum")
    run_job(rt, job_id, 1)
    status, tr = outcome(rt.jobs, job_id)
    assert status is JobStatus.FAILED
    assert tr.final and tr.final.error and "quantum" in tr.final.error.message


class Silent:
    """Blocks before its first chunk until its job is cancelled through `cancel`, as the
    local batch engine does for a request that waits for a slot or prefills."""

    def __init__(self) -> None:
        self.cancelled: dict[str, threading.Event] = {}

    def stream(self, job: ChatJob) -> Iterator[Chunk | Done]:
        event = self.cancelled.setdefault(job.id, threading.Event())
        event.wait(30)
        yield Done("stop", Usage(3, 0))

    def cancel(self, job_id: str) -> bool:
        self.cancelled.setdefault(job_id, threading.Event()).set()
        return True


@pytest.mark.parametrize("how", ["cancel", "owner_gone"])
def test_a_job_silent_before_its_first_token_is_stopped(rt, make_job, monkeypatch, how) -> None:
    """No token flows, so no flush reads the cancel flag: the stopper finds it instead."""
    from tasks.liveness import Liveness

    backend = Silent()
    use_backend(monkeypatch, backend)
    Liveness(rt.redis).api_beat("api-1", 60)
    job = ChatJob.from_dict({**make_job().to_dict(), "kind": "scripted", "backend": "q"})
    rt.jobs.create(job, "q", owner="api-1")
    rt.start_stopper()
    runner = threading.Thread(target=run_job, args=(rt, job.id, 1))
    runner.start()
    time.sleep(0.3)
    assert rt.jobs.record(job.id).status is JobStatus.RUNNING
    if how == "cancel":
        rt.jobs.cancel(job.id)  # a client hung up, or DELETE /v1/jobs/{id}
    else:
        Liveness(rt.redis).api_beat("api-1", 0)  # the API process holding its client died
    runner.join(timeout=2)
    assert not runner.is_alive()
    status, tr = outcome(rt.jobs, job.id)
    assert status is JobStatus.CANCELLED and tr.final and tr.final.type is Event.CANCELLED
    assert backend.cancelled[job.id].is_set() and job.id not in rt.running
    rt.stop()


def test_a_failed_end_carries_what_was_used(rt, make_job, monkeypatch) -> None:
    """Billing reads the terminal event: a completion that fails after streaming, or is
    cancelled mid-stream, reports its streamed tokens and its prompt (estimated)."""
    use_backend(monkeypatch, Scripted(["a", "b", "c"], fail=RouterError("boom")))
    job_id = submit(rt, make_job)
    run_job(rt, job_id, 1)
    status, tr = outcome(rt.jobs, job_id)
    assert status is JobStatus.FAILED and tr.final and tr.final.usage
    assert tr.final.usage.completion_tokens == 3 and tr.final.usage.prompt_tokens > 0


def test_an_end_before_any_token_used_nothing(rt, make_job, monkeypatch) -> None:
    use_backend(monkeypatch, Scripted([], fail=RouterError("refused upstream")))
    job_id = submit(rt, make_job)
    run_job(rt, job_id, 1)
    status, tr = outcome(rt.jobs, job_id)
    assert status is JobStatus.FAILED and tr.final and tr.final.usage
    assert tr.final.usage.total_tokens == 0
