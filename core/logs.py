"""Log lines that say which request and which job they belong to, for the API and the
workers alike.

- the log context: the request id and job id of the request or job the current thread or
  greenlet is serving (context variables, so each gevent greenlet has its own). The API
  binds the request id around each request (`api.logging_json`); a worker binds the job id
  around each task (`task_log_context_begin`/`_end`, receivers of Celery's task_prerun and
  task_postrun signals) and the request id, which the job carries, once it has read the job.
- `JsonFormatter`: one JSON object per log line, with both ids. ROUTER_LOG_JSON turns it
  on, in the API (`api.logging_json`) and in workers (`celery_json_logging`, a receiver of
  Celery's logger-setup signals).

The receivers take Celery's signal arguments but import nothing of Celery, so the API and
the workers share this one module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

from core.settings import Settings

# -- log context --------------------------------------------------------------------------

_request_id: ContextVar[str | None] = ContextVar("router_request_id", default=None)
_job_id: ContextVar[str | None] = ContextVar("router_job_id", default=None)


def current_request_id() -> str | None:
    """The request id bound in this thread or greenlet (API request, or a worker's job)."""
    return _request_id.get()


def current_job_id() -> str | None:
    return _job_id.get()


def set_request_id(request_id: str | None) -> None:
    """Bind the request id for the rest of this thread's or greenlet's current request."""
    _request_id.set(request_id)


@contextmanager
def bind_log_context(*, request_id: str | None = None, job_id: str | None = None) -> Iterator[None]:
    """Within the block, log lines carry `request_id` and `job_id` (None leaves one as it
    was). On exit both are restored, including what `set_request_id` changed inside:
    workers wrap each job in it."""
    tokens = (
        _request_id.set(request_id if request_id is not None else _request_id.get()),
        _job_id.set(job_id if job_id is not None else _job_id.get()),
    )
    try:
        yield
    finally:
        _job_id.reset(tokens[1])
        _request_id.reset(tokens[0])


def task_log_context_begin(args: Sequence[Any] | None = None, **_: Any) -> None:
    """Receiver for Celery's `task_prerun`: the task's log lines, and Celery's own
    "succeeded" line after it, name its job (`args[0]`); the task adds the request id
    with `set_request_id` once it has read the job."""
    _job_id.set(str(args[0]) if args else None)
    _request_id.set(None)


def task_log_context_end(**_: Any) -> None:
    """Receiver for Celery's `task_postrun`: this thread or greenlet serves no job now."""
    _job_id.set(None)
    _request_id.set(None)


# -- JSON log lines -----------------------------------------------------------------------

#: Attributes every LogRecord has; anything else on a record came from `extra=` and is
#: copied into the JSON object.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def _default(obj: Any) -> str:
    return str(obj)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601, ms), level, logger, message,
    request_id (null when unknown), job_id (when known), exc_info (a traceback, when
    there is one) and any `extra=` fields. Record attributes win over the bound context,
    so `log.info(..., extra={"job_id": j})` names a job outside a bound block."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC)
        body: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or current_request_id(),
        }
        job_id = getattr(record, "job_id", None) or current_job_id()
        if job_id:
            body["job_id"] = job_id
        if record.exc_info:
            body["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            body["exc_info"] = record.exc_text
        if record.stack_info:
            body["stack_info"] = self.formatStack(record.stack_info)
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in body:
                body[name] = value
        return orjson.dumps(body, default=_default).decode()


def use_json_formatter(logger: logging.Logger) -> int:
    """Give every handler of `logger` a JsonFormatter; returns how many it changed."""
    changed = 0
    for handler in logger.handlers:
        if not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(JsonFormatter())
            changed += 1
    return changed


def celery_json_logging(
    logger: logging.Logger | None = None, env: Mapping[str, str] | None = None, **_: Any
) -> None:
    """Receiver for Celery's `after_setup_logger` and `after_setup_task_logger` signals:
    with ROUTER_LOG_JSON on, the worker's log handlers write JSON lines."""
    settings = Settings.load(os.environ if env is None else env)
    if logger is not None and settings.log_json:
        use_json_formatter(logger)
