"""Run one delivered job: claim it, stream the backend's chunks onto the job's event
stream, stop on cancel or deadline, and always end with exactly one terminal event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import redis

from tasks import keys
from tasks.events import cancelled_fields, done_fields, error_fields, token_fields
from tasks.keys import JobStatus
from tasks.metrics import set_request_id
from tasks.runtime import WorkerRuntime
from tasks.stopper import JobStopped
from workers.errors import GatewayTimeoutError, RouterError
from workers.protocol import ChatJob, Chunk, Done, ErrorInfo

log = logging.getLogger(__name__)

WORKER_ERROR = ErrorInfo(
    message="The worker failed while generating this completion.",
    type="server_error",
    code="worker_error",
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
        self._finish(JobStatus.FAILED, error_fields(error))

    def cancelled(self) -> None:
        self._finish(JobStatus.CANCELLED, cancelled_fields())

    def _finish(self, status: JobStatus, fields: dict[str, str]) -> None:
        rt, job_id = self.rt, self.job.id
        script_keys = [
            keys.job_key(job_id),
            keys.events_key(job_id),
            keys.worker_jobs_key(rt.worker_id),
        ]
        args = [str(self.attempt), rt.worker_id, status.value, str(rt.settings.job_ttl), job_id]
        args += [x for kv in fields.items() for x in kv]
        written = rt.publisher.finish(job_id, script_keys, args, timeout=30.0)
        rt.publisher.forget(job_id)
        if not written:
            log.info("job %s attempt %d: superseded, result discarded", job_id, self.attempt)


def run_job(rt: WorkerRuntime, job_id: str, attempt: int) -> None:
    """Execute one delivery of a job; every path ends the attempt with one terminal event."""
    claim = _claim(rt, job_id, attempt)
    if claim.job is None:
        log.info("job %s attempt %d: %s, dropped", job_id, attempt, claim.outcome)
        return
    set_request_id(claim.job.request_id)  # this job's log lines name its API request
    writer = JobWriter(rt, claim.job, attempt, claim.token_base)
    if claim.job.expired():  # never call the backend for a job nobody waits for any more
        writer.fail(GatewayTimeoutError("The request timed out before a worker started it.").info())
        return
    started = time.monotonic()
    ok: bool | None = True
    rt.running.add(job_id, claim.job.backend, claim.job.kind)
    try:
        try:
            ok = _stream(rt, claim.job, writer)
        finally:
            rt.running.remove(job_id)  # no JobStopped can reach it after this
    except JobStopped:
        ok = None
        writer.cancelled()
    except RouterError as exc:
        ok = not backend_failure(exc)
        writer.fail(exc.info())
    except Exception:
        # A backend bug must not kill the worker: log it, fail this job, keep serving.
        log.exception("job %s: worker error", job_id)
        ok = False
        writer.fail(WORKER_ERROR)
    _record(rt, job_id, claim.job.backend, ok, started, writer.first_token_at)


def _claim(rt: WorkerRuntime, job_id: str, attempt: int) -> Any:
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


def backend_failure(exc: RouterError) -> bool:
    """Errors that count against a backend's health: rate limits, 5xx, timeouts; not the
    client's own mistakes (4xx), which the backend answered properly."""
    return exc.status_code == 429 or exc.status_code >= 500


def _record(
    rt: WorkerRuntime,
    job_id: str,
    backend: str,
    ok: bool | None,
    started: float,
    first: float | None,
) -> None:
    """Feed the backend's breaker and latency record, in the publisher's next pipeline (no
    round trip of its own, nothing waits); a cancelled job (None) says nothing."""
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
    an answer that arrives with it: nobody is waiting for that answer)."""
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
                raise GatewayTimeoutError("The request timed out while generating.")
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()  # stops generation and frees the device
    if writer.stop_requested():
        writer.cancelled()
        return None
    raise RouterError("The backend ended its stream without finishing.", code="worker_error")
