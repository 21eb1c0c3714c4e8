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

from api import accountant, auth, errors, guard, logging_json, metrics, requestlog, tenancy
from api.blueprints import admin, health, jobs, openai, ui, ws
from api.blueprints import metrics as metrics_bp
from api.blueprints import openapi as openapi_bp
from api.services import Services
from api.serving import ChatService
from core.settings import Settings

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

ADMIN_KEY_MIN = 16  # characters; a shorter ROUTER_ADMIN_KEY stops the API from starting


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The settings (core.settings: defaults, then the environment and a .env file, which
    never replaces a variable already set, then `config` by NAME) become app.config
    (`config["JOB_TTL"]`); keys of `config` that name no setting, such as Flask's own
    TESTING, join them as given. An admin key shorter than ADMIN_KEY_MIN stops it here."""
    load_dotenv(override=False)
    settings = Settings.load(os.environ, config)
    check_admin_key(settings.admin_key)
    app = Flask(__name__)
    ours = settings.as_config()
    app.config.update(ours)
    app.config.update({k: v for k, v in (config or {}).items() if k not in ours})
    app.config["SOCK_SERVER_OPTIONS"] = ws.server_options(app.config)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    services = Services(app.config, os.environ)
    app.extensions["services"] = services
    app.extensions["chat"] = ChatService(services)

    errors.init_app(app)
    for bp in (openai.bp, jobs.bp, ws.bp, admin.bp, health.bp, metrics_bp.bp, ui.bp, openapi_bp.bp):
        app.register_blueprint(bp)
    app.before_request(_assign_request_id)
    logging_json.init_app(app)  # after _assign_request_id: binds g.request_id
    guard.init_app(app)  # Host, Origin, Content-Type: before any route, with a request id
    auth.init_app(app, services.registry.get)  # the API key of /v1 requests, after the guard
    tenancy.init_app(app, services)  # x-ratelimit-* headers
    metrics.init_app(app)
    requestlog.init_app(app)
    accountant.init_app(app)  # after the request log, whose writer it records into
    app.after_request(_tag_response)
    return app


def check_admin_key(key: object) -> None:
    """Refuse to start with an admin key anyone could guess; none at all is fine."""
    if key is None or key == "":
        return
    if not isinstance(key, str) or len(key) < ADMIN_KEY_MIN:
        raise ValueError(
            f"ROUTER_ADMIN_KEY must be a string of at least {ADMIN_KEY_MIN} characters "
            "(e.g. `openssl rand -hex 24`); leave it unset to serve /admin to loopback "
            "clients only."
        )


def _assign_request_id() -> None:
    given = request.headers.get("x-request-id", "")
    g.request_id = given if _REQUEST_ID.match(given) else f"req_{uuid.uuid4().hex[:24]}"


def _tag_response(resp: Response) -> Response:
    resp.headers["x-request-id"] = getattr(g, "request_id", "")
    return resp
