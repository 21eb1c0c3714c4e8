"""One place that renders every error in OpenAI's shape, whatever raised it.

RouterError subclasses (workers/errors.py) carry status, type and code; werkzeug's HTTP
errors (404 route, 405, 413) and Redis outages map onto the same body.
"""

from __future__ import annotations

import logging
import math

import orjson
import redis
from flask import Flask, Response, g
from kombu.exceptions import OperationalError as BrokerError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from workers.errors import RequestTooLargeError, RouterError, ServiceUnavailableError
from workers.protocol import ErrorInfo

log = logging.getLogger(__name__)

_HTTP_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def error_response(info: ErrorInfo, retry_after: float | None = None) -> Response:
    resp = Response(orjson.dumps(info.body()), status=info.status, mimetype="application/json")
    if retry_after is not None:
        resp.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return resp


def _router_error(exc: RouterError) -> Response:
    return error_response(exc.info(), exc.retry_after)


def _http_error(exc: HTTPException) -> Response:
    if isinstance(exc, RequestEntityTooLarge):
        return _router_error(RequestTooLargeError("The request body is too large."))
    status = exc.code or 500
    info = ErrorInfo(
        message=exc.description or exc.name,
        type=_HTTP_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
        code=exc.name.lower().replace(" ", "_"),
        status=status,
    )
    return error_response(info)


#: What a client is told of a bug of ours, before a response started or during one.
INTERNAL_ERROR = "The server had an error while processing your request."


def redis_unavailable() -> ServiceUnavailableError:
    """What a client is told when Redis fails, before a response started or during one."""
    return ServiceUnavailableError("The job queue is unavailable; retry shortly.", retry_after=1)


def _redis_down(exc: Exception) -> Response:
    log.warning("redis unavailable: %s", exc)
    return _router_error(redis_unavailable())


def _unexpected(exc: Exception) -> Response:
    log.exception("request %s failed", getattr(g, "request_id", "-"))
    info = ErrorInfo(INTERNAL_ERROR, status=500)
    return error_response(info)


def init_app(app: Flask) -> None:
    """Register the handlers; the most specific class wins."""
    app.register_error_handler(RouterError, _router_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(redis.ConnectionError, _redis_down)
    app.register_error_handler(redis.TimeoutError, _redis_down)
    app.register_error_handler(BrokerError, _redis_down)  # kombu's face of the same outage
    app.register_error_handler(Exception, _unexpected)
