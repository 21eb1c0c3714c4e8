"""Structured logs for the API: with ROUTER_LOG_JSON on every log line of the process
(Flask, gunicorn, ours) is one JSON object carrying the request id, and job id when known.

`init_app(app)` binds `g.request_id` into the log context at the start of each request, so
that log lines (and `core.logs.current_request_id()`, which ChatService.submit copies
into the job so the worker logs it too) carry it. The formatter itself is
`core.logs.JsonFormatter`, shared with the workers, which may not import `api`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from flask import Flask, g

from core.logs import JsonFormatter, set_request_id, use_json_formatter
from core.settings import Settings

__all__ = ["JsonFormatter", "configure_json_logging", "init_app"]

#: Loggers with handlers of their own that would otherwise keep writing plain text.
GUNICORN_LOGGERS = ("gunicorn.error", "gunicorn.access")


def init_app(app: Flask) -> None:
    """Bind the request id into the log context for every request, and with LOG_JSON on
    (ROUTER_LOG_JSON) switch the process's logging to JSON lines at LOG_LEVEL. Register
    after the hook that sets `g.request_id`. Idempotent."""
    if app.extensions.get("router_logging"):
        return
    app.extensions["router_logging"] = True
    app.before_request(_bind_request_id)
    app.teardown_request(_unbind_request_id)
    settings = Settings.from_config(app.config)
    if settings.log_json:
        configure_json_logging(settings.log_level)
        use_json_formatter(app.logger)


def configure_json_logging(level: str | int = "INFO") -> logging.Handler:
    """JSON lines on stderr for the root logger (one handler, added once) and JSON for
    the handlers gunicorn installed; the root logger's level becomes `level` (a name such
    as INFO, or a number: ROUTER_LOG_LEVEL=10 is DEBUG)."""
    root = logging.getLogger()
    ours = next((h for h in root.handlers if getattr(h, "_router_json", False)), None)
    if ours is None:
        ours = logging.StreamHandler(sys.stderr)
        ours._router_json = True  # type: ignore[attr-defined]
        root.addHandler(ours)
    use_json_formatter(root)
    given = str(level).strip()
    root.setLevel(int(given) if given.isdigit() else given.upper())
    for name in GUNICORN_LOGGERS:
        use_json_formatter(logging.getLogger(name))
    return ours


def _bind_request_id() -> None:
    set_request_id(g.get("request_id"))


def _unbind_request_id(_exc: Any = None) -> None:
    set_request_id(None)
