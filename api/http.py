"""Small request/response helpers shared by the blueprints."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response, current_app, request

from api.client import Client, patience, watch_client
from api.serving import ChatService, Submitted
from workers.errors import InvalidRequestError


def json_body() -> Any:
    """The request body as JSON; 400 if it is not JSON, 413 (raised by werkzeug) if too big."""
    raw = request.get_data(cache=True)
    if not raw:
        raise InvalidRequestError("The request body is empty; send a JSON object.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request ({exc.msg} at position {exc.pos})."
        ) from None


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, headers=headers, mimetype="application/json")


def chat_service() -> ChatService:
    found: ChatService = current_app.extensions["chat"]
    return found


def route_headers(sub: Submitted) -> dict[str, str]:
    """Which backend and model answered (x-router-*), plus the job to poll or cancel."""
    return {
        "x-router-backend": sub.backend,
        "x-router-model": sub.route.id,
        "x-router-job-id": sub.job_id,
    }


def request_client(service: ChatService, watch: bool = True) -> Client:
    """The client of this synchronous request: owned by this API process, with the patience
    its headers state, and (`watch`) its job cancelled the moment it hangs up."""
    owner = service.router.presence.id()
    watcher = watch_client(request.environ, service.router.jobs.cancel) if watch else None
    return Client(owner, patience(request.headers), watcher)
