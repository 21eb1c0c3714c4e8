"""POST-then-poll jobs: create (202, Idempotency-Key), read, cancel, and SSE events with
Last-Event-ID resume."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, request, stream_with_context

from api.accounting import begin
from api.auth import current_caller
from api.http import chat_service, json_body, json_response, route_headers
from api.identifiers import event_id, event_order, job_id_of
from api.schemas import completion_body, parse_chat_request
from api.services import services
from api.serving import completion_id
from api.streaming import job_sse
from tasks.events import Transcript
from tasks.jobs import IdempotencyConflict, JobRecord, body_digest
from tasks.keys import Event, JobStatus
from workers.errors import ConflictError, InvalidRequestError, NotFoundError

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

CANCEL_WAIT = 5.0  # seconds DELETE waits for a running job's worker to stop


def job_body(rec: JobRecord, transcript: Transcript) -> dict[str, object]:
    """The job object: status, text so far, and the final completion or error."""
    final = transcript.final
    result = error = None
    if final is not None and final.type is Event.DONE:
        result = completion_body(
            completion_id(rec.id),
            int(rec.created),
            rec.model,
            transcript.text,
            final.finish_reason,
            final.usage,
            transcript.tools.calls(),
            transcript.logprobs,
        )
    elif final is not None and final.type is Event.ERROR and final.error:
        error = final.error.body()["error"]
    return {
        "id": rec.id,
        "object": "job",
        "status": rec.status.value,
        "model": rec.model,
        "backend": rec.backend,
        "created_at": int(rec.created),
        "started_at": int(rec.started) if rec.started else None,
        "finished_at": int(rec.finished) if rec.finished else None,
        "attempt": rec.attempt,
        "cancel_requested": rec.cancel_requested,
        "text": transcript.text,
        "result": result,
        "error": error,
    }


def _no_job(raw_id: str) -> NotFoundError:
    return NotFoundError(f"No job with id `{raw_id}`.", param="job_id", code="job_not_found")


def _snapshot(raw_id: str) -> tuple[JobRecord, Transcript]:
    """The job and its events; 404 for a job of another API key, as for none."""
    snap = services().jobs.snapshot(job_id_of(raw_id))
    if snap is None or not current_caller().owns(snap[0].tenant):
        raise _no_job(raw_id)
    return snap


@bp.post("")
def create_job() -> Response:
    """Queue a chat completion and answer at once with 202 and the job to poll. The
    completion is recorded once, when the job ends, whether or not anyone reads it (this
    API process follows it: api/accounting.py); a replay of an Idempotency-Key is not."""
    raw = json_body()
    req = parse_chat_request(raw)
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > 255:
        raise InvalidRequestError("Idempotency-Key is longer than 255 characters.")
    service = chat_service()
    completion = begin(service, req.model)
    try:
        sub = completion.submit(
            service,
            req,
            idempotency_key=key,
            digest=body_digest(request.get_data()),
            headers=request.headers.items(),
            size=len(request.get_data()),
        )
    except IdempotencyConflict:
        raise ConflictError(
            "Idempotency-Key was already used with a different request body.",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        ) from None
    completion.follow()
    rec, transcript = _snapshot(sub.job_id)
    headers = {**route_headers(sub), "Location": f"/v1/jobs/{sub.job_id}"}
    if sub.replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(job_body(rec, transcript), status=202, headers=headers)


@bp.get("/<job_id>")
def get_job(job_id: str) -> Response:
    rec, transcript = _snapshot(job_id)
    return json_response(job_body(rec, transcript))


@bp.delete("/<job_id>")
def cancel_job(job_id: str) -> Response:
    """Cancel: a queued job ends at once; a running one stops at its next token."""
    jid = job_id_of(job_id)
    rec = services().jobs.record(jid)
    if rec is not None and not current_caller().owns(rec.tenant):
        raise _no_job(job_id)
    status = services().jobs.cancel(jid)
    if status is None:
        raise _no_job(job_id)
    if status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise ConflictError(f"Job `{job_id}` already {status.value}.", code="job_finished")
    give_up = time.monotonic() + CANCEL_WAIT
    rec, transcript = _snapshot(jid)
    while not rec.status.terminal and time.monotonic() < give_up:
        time.sleep(0.05)
        rec, transcript = _snapshot(jid)
    return json_response(job_body(rec, transcript))


@bp.get("/<job_id>/events")
def job_events(job_id: str) -> Response:
    """SSE replay from the start (or after Last-Event-ID), then live, to the terminal event."""
    header = request.headers.get("Last-Event-ID")
    if header:
        after = event_id(header)
    else:
        after = event_id(request.args.get("last_event_id") or "0-0", param="last_event_id")
    rec, transcript = _snapshot(job_id)
    if transcript.final is not None and event_order(after) >= event_order(transcript.final.id):
        # the client has the terminal event: 204 tells EventSource to stop reconnecting
        return Response(status=204)
    keepalive = float(current_app.config["KEEPALIVE"])
    body = job_sse(chat_service(), rec.id, rec.queue, rec.deadline, after, keepalive)
    return Response(
        stream_with_context(body),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
