"""Small request/response helpers shared by the blueprints."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response, current_app, request

from api.client import Client, patience, watch_client
from api.schemas import BYTES_PER_TOKEN
from api.serving import ChatService, Submitted
from workers.errors import InvalidRequestError, RequestTooLargeError


def json_body() -> Any:
    """A chat request body as JSON. 413 when the body is larger than MAX_CONTENT_LENGTH
    (raised by werkzeug) or than any enabled model could read: more than BYTES_PER_TOKEN
    bytes per token of the largest context window (checked on Content-Length before the
    body is read). 400 if it is not JSON."""
    limit = chat_service().services.registry.get().largest_context_window * BYTES_PER_TOKEN
    _check_size(request.content_length, limit)
    raw = request.get_data(cache=True)
    _check_size(len(raw), limit)  # a chunked body has no Content-Length
    if not raw:
        raise InvalidRequestError("The request body is empty; send a JSON object.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request ({exc.msg} at position {exc.pos})."
        ) from None


def _check_size(size: int | None, limit: int) -> None:
    if limit and size is not None and size > limit:
        raise RequestTooLargeError(
            f"The request body is {size} bytes, more than any model here can read: the "
            f"largest context window is {limit // BYTES_PER_TOKEN} tokens, about {limit} bytes."
        )


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, headers=headers, mimetype="application/json")


def chat_service() -> ChatService:
    found: ChatService = current_app.extensions["chat"]
    return found


def route_headers(sub: Submitted) -> dict[str, str]:
    """Which backend and model answered (x-router-*), plus the job to poll or cancel."""
    return {
        "x-router-backend": sub.deployment.backend,
        "x-router-model": sub.route.id,
        "x-router-job-id": sub.job_id,
    }


def request_client(service: ChatService, watch: bool = True) -> Client:
    """The client of this synchronous request: owned by this API process, with the patience
    its headers state, and (`watch`) its job cancelled the moment it hangs up."""
    owner = service.services.presence.id()
    watcher = watch_client(request.environ, service.services.jobs.cancel) if watch else None
    return Client(owner, patience(request.headers), watcher)
