"""Run one delivered job: claim it, check that this worker may run it, stream the
backend's chunks onto the job's event stream, stop on cancel or deadline, and always end
with exactly one terminal event.

Whoever can write to Redis can write a job, so a worker trusts only its own configuration:
a job whose kind is not what this worker serves on the queue it came from, or a provider
job naming another backend than that queue's, fails as refused and never reaches a
backend; the backend itself resolves base URL and key from the worker's configuration
(workers/providers.py). A claimed job whose request does not decode (written by another
version of the router, or corrupt) fails at once instead of staying `running`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import redis
from celery import current_task

from core.kinds import kind_info
from core.logs import set_request_id
from tasks import keys
from tasks.events import cancelled_fields, done_fields, error_fields, token_fields
from tasks.jobs import Claim
from tasks.keys import TASK_NAME, JobStatus
from tasks.runtime import WorkerRuntime
from tasks.stopper import JobStopped
from workers.errors import GatewayTimeoutError, RouterError
from workers.protocol import ChatJob, Chunk, Done, ErrorInfo, Usage, partial_usage
from workers.providers import queue_kind

log = logging.getLogger(__name__)

WORKER_ERROR = ErrorInfo(
    message="The worker failed while generating this completion.",
    type="server_error",
    code="worker_error",
    status=500,
)
UNREADABLE = ErrorInfo(
    message="The worker could not read this job's request (written by another version of "
    "the router?).",
    type="server_error",
    code="job_unreadable",
    status=500,
)


class JobWriter:
    """Writes one attempt's events through the process's publisher."""

    def __init__(self, rt: WorkerRuntime, job: ChatJob, attempt: int, token_base: int) -> None:
        self.rt, self.job, self.attempt, self.base = rt, job, attempt, token_base
        self.seq = 0
        deadline = job.deadline or time.time() + rt.settings.request_timeout
        self.lifetime = max(1, int(deadline - time.time())) + rt.settings.job_ttl

    first_token_at: float | None = None

    def token(self, chunk: Chunk) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        expire = self.lifetime if self.seq == 0 else 0
        fields = token_fields(self.seq, chunk.delta, chunk.tool_calls, chunk.logprobs)
        self.rt.publisher.token(self.job.id, f"{self.base}-{self.seq}", fields, expire)
        self.seq += 1

    def stop_requested(self) -> bool:
        return self.rt.publisher.should_stop(self.job.id)

    def done(self, done: Done) -> None:
        self._finish(JobStatus.SUCCEEDED, done_fields(done))

    def fail(self, error: ErrorInfo) -> None:
        self._finish(JobStatus.FAILED, error_fields(error, self.used()))

    def cancelled(self) -> None:
        self._finish(JobStatus.CANCELLED, cancelled_fields(self.used()))

    def used(self) -> Usage:
        """What this attempt has used so far (it ended without the backend's own count)."""
        return partial_usage(self.job, self.seq)

    def _finish(self, status: JobStatus, fields: dict[str, str]) -> None:
        finish(self.rt, self.job.id, self.attempt, status, fields)


def finish(
    rt: WorkerRuntime, job_id: str, attempt: int, status: JobStatus, fields: dict[str, str]
) -> None:
    """End this worker's attempt at a job with `status` and one terminal event (fenced: a
    superseded attempt, or a job this worker does not hold, writes nothing)."""
    script_keys, args = rt.jobs.finish_call(job_id, attempt, rt.worker_id, status.value, fields)
    written = rt.publisher.finish(job_id, script_keys, args, timeout=30.0)
    rt.publisher.forget(job_id)
    if not written:
        log.info("job %s attempt %d: superseded, result discarded", job_id, attempt)


def run_job(rt: WorkerRuntime, job_id: str, attempt: int) -> None:
    """Execute one delivery of a job; every path ends the attempt with one terminal event."""
    claimed = _claimed(rt, job_id, attempt)
    if claimed is None:
        return
    job, token_base = claimed
    set_request_id(job.request_id)  # this job's log lines name its API request
    writer = JobWriter(rt, job, attempt, token_base)
    refusal = refused(rt, job, delivered_queue(rt, job_id))
    if refusal:
        log.warning("job %s attempt %d: refused: %s", job_id, attempt, refusal)
        writer.fail(
            RouterError(f"The worker refused this job: {refusal}.", code="job_refused").info()
        )
        return
    if job.expired():  # never call the backend for a job nobody waits for any more
        writer.fail(GatewayTimeoutError("The request timed out before a worker started it.").info())
        return
    started = time.monotonic()
    ok = _execute(rt, job, writer)
    _record(rt, job_id, job.backend, ok, started, writer.first_token_at)


def _claimed(rt: WorkerRuntime, job_id: str, attempt: int) -> tuple[ChatJob, int] | None:
    """The claimed job and its first token number, or None: not to be run (finished,
    superseded, a duplicate delivery...), or claimed but its request does not decode,
    failed here."""
    try:
        claim = _claim(rt, job_id, attempt)
    except redis.RedisError:
        raise  # Redis away longer than a request may last: the job index publishes it again
    except Exception as exc:  # noqa: BLE001 - claimed, but its request does not decode: fail it
        log.error("job %s attempt %d: request unreadable (%r); failing it", job_id, attempt, exc)
        finish(rt, job_id, attempt, JobStatus.FAILED, error_fields(UNREADABLE))
        return None
    if claim.job is None:
        log.info("job %s attempt %d: %s, dropped", job_id, attempt, claim.outcome)
        return None
    return claim.job, claim.token_base


def _execute(rt: WorkerRuntime, job: ChatJob, writer: JobWriter) -> bool | None:
    """Run the job on its backend to one terminal event. Returns what the backend's record
    learns: True (it answered), False (it or its upstream failed), None (nothing: a cancel,
    or a failure of ours)."""
    rt.running.add(job.id, job.backend, job.kind, job.deadline)
    try:
        try:
            return _stream(rt, job, writer)
        finally:
            rt.running.remove(job.id)  # no JobStopped can reach it after this
    except JobStopped:  # cancelled, or stopped at its deadline, while the backend blocked
        if job.expired():
            writer.fail(_timed_out().info())
            return False
        writer.cancelled()
        return None
    except RouterError as exc:
        writer.fail(exc.info())
        return backend_outcome(exc)
    except Exception:
        # A bug (a translator's TypeError...) must not kill the worker: log it, fail this
        # job, keep serving. It says nothing of the backend's health: not recorded.
        log.exception("job %s: worker error", job.id)
        writer.fail(WORKER_ERROR)
        return None


def delivered_queue(rt: WorkerRuntime, job_id: str) -> str:
    """The queue this delivery came from: the running task's name (`router.generate.<queue>`)
    or, for the generic task (operator-added queues), its message's routing key; with no
    Celery task (run_job driven in-process), the job hash's `queue` field."""
    if current_task:
        name = str(current_task.name or "")
        if name.startswith(TASK_NAME + "."):
            return name[len(TASK_NAME) + 1 :]
        routing = (current_task.request.delivery_info or {}).get("routing_key")
        if routing:
            return str(routing)
    return str(rt.redis.hget(keys.job_key(job_id), "queue") or "")


def refused(rt: WorkerRuntime, job: ChatJob, queue: str) -> str | None:
    """Why this worker must not run `job`, delivered on `queue`, by its own configuration
    (the queues it serves and their kinds); None when it may."""
    if rt.served is not None and queue not in rt.served:
        return f"this worker does not serve queue `{queue}`"
    kind = rt.served[queue] if rt.served is not None else queue_kind(queue, rt.env)
    if job.kind != kind:
        return f"a job of kind `{job.kind}` came on queue `{queue}`, which serves kind `{kind}`"
    info = kind_info(kind)
    if (info is None or info.own_queue) and job.backend != queue:
        return (
            f"a job for backend `{job.backend}` came on queue `{queue}`; a provider backend "
            "is served on the queue named after it"
        )
    return None


def _claim(rt: WorkerRuntime, job_id: str, attempt: int) -> Claim:
    """Claim the job, waiting out a Redis outage (the delivery is acked only after this
    returns: giving up would lose an accepted job)."""
    give_up, delay = time.monotonic() + rt.settings.request_timeout, 0.1
    while True:
        try:
            return rt.jobs.claim(job_id, attempt, rt.worker_id)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() >= give_up:
                raise
            log.warning("job %s: Redis unavailable at claim (%s); retrying", job_id, exc)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def backend_outcome(exc: RouterError) -> bool | None:
    """What a job that failed with `exc` tells of its backend. Only what its upstream or
    the transport to it did (`exc.upstream`, set in workers/upstream.py) counts: 429, 5xx,
    timeouts and lost connections are failures (False); any other answer, a 4xx that
    refuses the client's request, shows the backend well (True). An error of ours (a
    request we could not translate, a refused job, a key this worker lacks) tells nothing
    (None): the backend was never asked."""
    if not exc.upstream:
        return None
    return not (exc.status_code == 429 or exc.status_code >= 500)


def _timed_out() -> GatewayTimeoutError:
    """The job's deadline passed while its backend worked: the backend was too slow, which
    counts against it."""
    return GatewayTimeoutError("The request timed out while generating.", upstream=True)


def _record(
    rt: WorkerRuntime,
    job_id: str,
    backend: str,
    ok: bool | None,
    started: float,
    first: float | None,
) -> None:
    """Feed the backend's breaker and latency record, in the publisher's next pipeline (no
    round trip of its own, nothing waits); None (cancelled, or a bug of ours) says nothing."""
    if ok is None:
        return
    now = time.monotonic()
    ttft, total = ((first or now) - started) * 1000, (now - started) * 1000

    def recorded(state: object) -> None:
        if isinstance(state, Exception):
            log.warning("backend %s: outcome not recorded (%s)", backend, state)
        elif state == "open" and not ok:
            log.warning("backend %s: circuit open", backend)

    rt.publisher.call(
        job_id, lambda pipe: rt.health.record(backend, ok, ttft, total, pipe), recorded
    )


def _stream(rt: WorkerRuntime, job: ChatJob, writer: JobWriter) -> bool | None:
    """Relay the backend's chunks; True when done, None when cancelled (a cancel wins over
    an answer that arrives with it: nobody is waiting for that answer). Every chunk, an
    empty keep-alive too, is a moment to check the cancel flag and the deadline."""
    chunks: Iterator[Chunk | Done] = iter(rt.backend(job.kind).stream(job))
    try:
        for item in chunks:
            if writer.stop_requested():
                break
            if isinstance(item, Done):
                writer.done(item)
                return True
            if item:
                writer.token(item)
            if writer.stop_requested():
                break
            if job.expired():
                raise _timed_out()
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()  # stops generation and frees the device
    if writer.stop_requested():
        if job.expired():  # the stopper stopped it at its deadline (tasks/stopper.py)
            raise _timed_out()
        writer.cancelled()
        return None
    raise RouterError("The backend ended its stream without finishing.", code="worker_error")
