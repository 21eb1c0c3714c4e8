"""WebSockets: follow one job (`/v1/jobs/{id}/ws`) or send requests and receive their
tokens on one socket (`/v1/ws`, used by the web UI).

Server messages are JSON: {"type": "job", id, model, backend}, {"type": "token", seq,
delta}, {"type": "restart"}, {"type": "done", finish_reason, usage}, {"type": "error",
error}, {"type": "cancelled"}. The client may send {"type": "cancel"} at any time; any
other message while a job runs is answered with an error (`request_in_progress`) and the
job goes on. Limits (create_app sets them): a message is at most MAX_CONTENT_LENGTH bytes
(the socket is closed with 1009 above it), the server pings every KEEPALIVE seconds and
closes a socket that stops answering, and `/v1/ws` closes after WS_IDLE_TIMEOUT seconds
without a request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
import redis
from flask import Blueprint, current_app, g, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from api.accounting import Completion, begin, failure_status
from api.auth import WS_PROTOCOL, socket_caller
from api.http import chat_service, request_client
from api.identifiers import event_id, event_order, job_id_of
from api.schemas import parse_chat_request
from api.services import services
from api.serving import ChatService
from api.streaming import cancel_quietly, stream_failure
from workers.errors import ConflictError, InvalidRequestError, NotFoundError, RouterError

log = logging.getLogger(__name__)

bp = Blueprint("ws", __name__)
sock = Sock()

IDLE_CLOSE = 1000  # normal closure: the socket sat idle past WS_IDLE_TIMEOUT


def server_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """flask-sock's SOCK_SERVER_OPTIONS: a message is at most a request body
    (MAX_CONTENT_LENGTH; simple-websocket closes the socket with 1009 above it), a ping every
    KEEPALIVE seconds (a socket that has not answered the last one by then is closed). Options
    given in the config win."""
    size = config.get("MAX_CONTENT_LENGTH")
    ping = float(config.get("KEEPALIVE") or 0)
    given = config.get("SOCK_SERVER_OPTIONS") or {}
    return {
        "max_message_size": int(size) if size else None,
        "ping_interval": ping or None,
        "subprotocols": [WS_PROTOCOL],  # selected when a browser offers its key beside it
        **given,
    }


def _size(raw: str | bytes) -> int:
    """A message's bytes (what the budget's worst case is priced at: api/tenancy.py)."""
    return len(raw.encode() if isinstance(raw, str) else raw)


def _send(ws: Any, body: dict[str, Any]) -> None:
    ws.send(orjson.dumps(body).decode())


def _send_error(ws: Any, exc: RouterError) -> None:
    _send(ws, {"type": "error", "error": exc.info().body()["error"]})


def _busy(owner: bool) -> RouterError:
    """The answer to a message that is not a cancel, sent while a job runs."""
    if owner:
        return ConflictError(
            "A request is already running on this socket; this message was dropped. Wait for "
            'its terminal event, or send {"type": "cancel"}.',
            code="request_in_progress",
        )
    return InvalidRequestError(
        'This socket follows one job; the only message it takes is {"type": "cancel"}.',
        code="unsupported_message",
    )


def _read_client(ws: Any, job_id: str, owner: bool) -> None:
    """Everything the client sent since the last look, without waiting: {"type": "cancel"}
    cancels the job; anything else is answered with an error, and the job goes on."""
    while (raw := ws.receive(timeout=0)) is not None:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            _send_error(ws, InvalidRequestError("Messages must be JSON objects."))
            continue
        if isinstance(body, dict) and body.get("type") == "cancel":
            services().jobs.cancel(job_id)
        else:
            _send_error(ws, _busy(owner))


def pump(
    ws: Any,
    service: ChatService,
    job_id: str,
    queue: str,
    deadline: float,
    after: str,
    owner: bool = False,
    completion: Completion | None = None,
) -> None:
    """Forward a job's events to the socket until its terminal event, or one error message
    if reading it fails; honour client cancels. The `owner` (the socket that created the
    job) cancels it if it goes away, or the stream fails, before the job ends. Its
    `completion` watches the events, and learns at once when the socket stops reading
    before the end (api/accounting.py then follows the job for its record)."""
    ended = False
    events = service.events(job_id, queue, deadline, after, owner=owner)
    if completion is not None:
        events = completion.events(events)
    try:
        for event in events:
            _read_client(ws, job_id, owner)
            if event is None:
                continue
            ended = event.type.terminal
            _send(ws, {"type": event.type.value, "id": event.id, **event.payload()})
            if ended:
                return
        raise RouterError("The job's event stream ended without a result.")
    except ConnectionClosed:
        raise  # the client left: nothing to tell it
    except Exception as exc:  # noqa: BLE001 - every failure becomes the socket's error message
        ended = isinstance(exc, RouterError)  # the job was cancelled or has ended
        _send_error(ws, stream_failure(exc))
    finally:
        if owner and not ended:
            cancel_quietly(service, job_id)
        close = getattr(events, "close", None)
        if close is not None:
            close()  # now, rather than whenever this frame is collected


@sock.route("/v1/jobs/<job_id>/ws", bp=bp)
def job_socket(ws: Any, job_id: str) -> None:
    """Follow one job from the start or after `?last_event_id=`, to its terminal event."""
    after = request.args.get("last_event_id") or "0-0"
    try:
        caller = socket_caller(ws, current_app.extensions["auth"])
        jid = job_id_of(job_id)
        event_id(after, param="last_event_id")
        snap = services().jobs.snapshot(jid)
        if snap is None or not caller.owns(snap[0].tenant):
            raise NotFoundError(f"No job with id `{job_id}`.", param="job_id", code="job_not_found")
    except (RouterError, redis.RedisError) as exc:
        _send_error(ws, stream_failure(exc))
        return
    rec, transcript = snap
    final = transcript.final
    if final is not None and event_order(after) >= event_order(final.id):
        return  # the client has the terminal event already: nothing is left to send
    pump(ws, chat_service(), rec.id, rec.queue, rec.deadline, after)


@sock.route("/v1/ws", bp=bp)
def chat_socket(ws: Any) -> None:
    """One request at a time: send a chat completion body, receive its events. A socket
    with no request for WS_IDLE_TIMEOUT seconds is closed."""
    service = chat_service()
    idle = float(current_app.config["WS_IDLE_TIMEOUT"]) or None
    gate = current_app.extensions["auth"]
    try:
        socket_caller(ws, gate)
    except RouterError as exc:
        _send_error(ws, exc)
        return
    while True:
        raw = ws.receive(timeout=idle)
        if raw is None:  # idle: nothing sent for WS_IDLE_TIMEOUT seconds
            ws.close(reason=IDLE_CLOSE, message=f"No request for {idle:g} s.")
            return
        try:
            g.caller = gate.renewed(g.caller)  # the key may have been revoked since
        except RouterError as exc:
            _send_error(ws, exc)
            return  # the socket closes: its key no longer works
        completion: Completion | None = None
        try:
            body = orjson.loads(raw)
            if isinstance(body, dict) and body.get("type") == "cancel":
                continue  # nothing running between requests
            req = parse_chat_request(body)
            completion = begin(service, req.model)  # recorded once: api/accounting.py
            client = request_client(service, watch=False)  # the socket's end cancels it
            sub = completion.submit(
                service, req, headers=request.headers.items(), client=client, size=_size(raw)
            )
        except orjson.JSONDecodeError:
            _send_error(ws, InvalidRequestError("Messages must be JSON objects."))
            continue
        except (RouterError, redis.RedisError) as exc:
            if completion is not None:
                completion.finish(failure_status(exc))  # unless submit recorded it already
            _send_error(ws, stream_failure(exc))
            continue
        backend = sub.deployment.backend
        _send(ws, {"type": "job", "id": sub.job_id, "model": sub.route.id, "backend": backend})
        pump(ws, service, sub.job_id, sub.deployment.queue, sub.deadline, "0-0", True, completion)
