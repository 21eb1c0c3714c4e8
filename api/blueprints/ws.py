"""WebSockets: follow one job (`/v1/jobs/{id}/ws`) or send requests and receive their
tokens on one socket (`/v1/ws`, used by the web UI).

Server messages are JSON: {"type": "job", id, model, backend}, {"type": "token", seq,
delta}, {"type": "restart"}, {"type": "done", finish_reason, usage}, {"type": "error",
error}, {"type": "cancelled"}. The client may send {"type": "cancel"} at any time.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from flask import Blueprint, request
from flask_sock import Sock

from api.extension import router
from api.http import chat_service, request_client
from api.metrics import CompletionObserver
from api.schemas import parse_chat_request
from api.serving import ChatService
from workers.errors import InvalidRequestError, NotFoundError, RouterError

log = logging.getLogger(__name__)

bp = Blueprint("ws", __name__)
sock = Sock()


def _send(ws: Any, body: dict[str, Any]) -> None:
    ws.send(orjson.dumps(body).decode())


def _send_error(ws: Any, exc: RouterError) -> None:
    _send(ws, {"type": "error", "error": exc.info().body()["error"]})


def _cancel_requested(ws: Any) -> bool:
    """Non-blocking look at what the client sent; True for {"type": "cancel"}."""
    raw = ws.receive(timeout=0)
    if not raw:
        return False
    try:
        return bool(orjson.loads(raw).get("type") == "cancel")
    except (orjson.JSONDecodeError, AttributeError):
        return False


def pump(
    ws: Any,
    service: ChatService,
    job_id: str,
    queue: str,
    deadline: float,
    after: str,
    owner: bool = False,
    observer: CompletionObserver | None = None,
) -> None:
    """Forward a job's events to the socket until the job ends; honour client cancels.
    The `owner` (the socket that created the job) cancels it if it goes away mid-job."""
    ended = False
    try:
        events = service.events(job_id, queue, deadline, after, owner=owner)
        if observer is not None:
            events = observer.events(events)
        for event in events:
            if _cancel_requested(ws):
                router().jobs.cancel(job_id)
            if event is None:
                continue
            ended = event.type.terminal
            _send(ws, {"type": event.type.value, "id": event.id, **event.payload()})
            if ended:
                return
    except RouterError as exc:
        ended = True
        _send_error(ws, exc)
    finally:
        if owner and not ended:
            router().jobs.cancel(job_id)


@sock.route("/v1/jobs/<job_id>/ws", bp=bp)
def job_socket(ws: Any, job_id: str) -> None:
    rec = router().jobs.record(job_id)
    if rec is None:
        _send_error(ws, NotFoundError(f"No job with id `{job_id}`.", code="job_not_found"))
        return
    after = request.args.get("last_event_id") or "0-0"
    pump(ws, chat_service(), rec.id, rec.queue, rec.deadline, after)


@sock.route("/v1/ws", bp=bp)
def chat_socket(ws: Any) -> None:
    """One request at a time: send a chat completion body, receive its events."""
    service = chat_service()
    while True:
        raw = ws.receive()
        if raw is None:
            return
        observer: CompletionObserver | None = None
        try:
            body = orjson.loads(raw)
            if isinstance(body, dict) and body.get("type") == "cancel":
                continue  # nothing running between requests
            req = parse_chat_request(body)
            observer = CompletionObserver.begin(service, req.model)
            client = request_client(service, watch=False)  # the socket's end cancels it
            sub = service.submit(req, headers=request.headers.items(), client=client)
        except orjson.JSONDecodeError:
            _send_error(ws, InvalidRequestError("Messages must be JSON objects."))
            continue
        except RouterError as exc:
            if observer is not None:
                observer.finish(str(exc.status_code))
            _send_error(ws, exc)
            continue
        _send(ws, {"type": "job", "id": sub.job_id, "model": sub.route.id, "backend": sub.backend})
        observer.submitted(sub)
        pump(ws, service, sub.job_id, sub.queue, sub.deadline, "0-0", True, observer)
