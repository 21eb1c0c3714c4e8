"""Run one delivered job: claim it, stream the backend's chunks onto the job's event
stream, stop on cancel or deadline, and always end with exactly one terminal event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from tasks import keys
from tasks.events import cancelled_fields, done_fields, error_fields, token_fields
from tasks.keys import JobStatus
from tasks.runtime import WorkerRuntime
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

    def token(self, chunk: Chunk) -> None:
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
    claim = rt.jobs.claim(job_id, attempt, rt.worker_id)
    if claim.job is None:
        log.info("job %s attempt %d: %s, dropped", job_id, attempt, claim.outcome)
        return
    writer = JobWriter(rt, claim.job, attempt, claim.token_base)
    rt.active.add(job_id)
    try:
        if claim.job.expired():
            raise GatewayTimeoutError("The request timed out before a worker could start it.")
        _stream(rt, claim.job, writer)
    except RouterError as exc:
        writer.fail(exc.info())
    except Exception:
        # A backend bug must not kill the worker: log it, fail this job, keep serving.
        log.exception("job %s: worker error", job_id)
        writer.fail(WORKER_ERROR)
    finally:
        rt.active.discard(job_id)


def _stream(rt: WorkerRuntime, job: ChatJob, writer: JobWriter) -> None:
    chunks: Iterator[Chunk | Done] = iter(rt.backend(job.kind).stream(job))
    try:
        for item in chunks:
            if isinstance(item, Done):
                writer.done(item)
                return
            if item:
                writer.token(item)
            if writer.stop_requested():
                writer.cancelled()
                return
            if job.expired():
                raise GatewayTimeoutError("The request timed out while generating.")
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()  # stops generation and frees the device
    raise RouterError("The backend ended its stream without finishing.", code="worker_error")
