"""The HTTP front door: an OpenAI-compatible Flask app that turns each completion into a
Celery job and streams its tokens back. `create_app()` builds it; nothing happens at import.

    gunicorn -k gevent -w 2 -b 127.0.0.1:8000 'api:create_app()'
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from typing import Any

from dotenv import load_dotenv
from flask import Flask, Response, g, request

from api import errors, logging_json, metrics, requestlog
from api.blueprints import admin, health, jobs, openai, ui, ws
from api.blueprints import metrics as metrics_bp
from api.config import defaults
from api.extension import Router
from api.serving import ChatService

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Defaults, then ROUTER_* environment variables (and a .env file), then `config`."""
    load_dotenv(override=False)
    app = Flask(__name__)
    app.config.from_mapping(defaults(os.environ))
    app.config.from_prefixed_env("ROUTER")
    if config:
        app.config.update(config)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    router = Router(app.config, os.environ)
    app.extensions["router"] = router
    app.extensions["chat"] = ChatService(router)

    errors.init_app(app)
    for bp in (openai.bp, jobs.bp, ws.bp, admin.bp, health.bp, metrics_bp.bp, ui.bp):
        app.register_blueprint(bp)
    app.before_request(_assign_request_id)
    logging_json.init_app(app)  # after _assign_request_id: binds g.request_id
    metrics.init_app(app)
    requestlog.init_app(app)
    app.after_request(_tag_response)
    return app


def _assign_request_id() -> None:
    given = request.headers.get("x-request-id", "")
    g.request_id = given if _REQUEST_ID.match(given) else f"req_{uuid.uuid4().hex[:24]}"


def _tag_response(resp: Response) -> Response:
    resp.headers["x-request-id"] = getattr(g, "request_id", "")
    return resp
