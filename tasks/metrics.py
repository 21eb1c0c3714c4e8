"""Observability below the API, shared by the API and the workers (tasks is the lowest
layer both may import):

- `read_cluster`: what Redis says about the cluster right now (queue depth, live workers
  per queue, circuit state per backend, its own memory use and limit). The API's `/metrics`
  calls it at scrape time, so workers expose no metrics endpoint of their own: their
  queues, heartbeats and circuits are all in Redis already.
- the log context (request id, job id) of the request or job the current thread or greenlet
  is serving, and `JsonFormatter`, which writes one JSON object per log line with them.
  `ROUTER_LOG_JSON=1` turns it on, in the API (`api.logging_json`) and in workers
  (`celery_json_logging`, connected to Celery's logger-setup signals). A worker binds the
  job id around each task (`task_log_context_begin`/`_end` on Celery's task_prerun and
  task_postrun) and the request id, which the job carries, once it has read the job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from tasks import keys
from tasks.liveness import Liveness

# -- cluster readings ---------------------------------------------------------------------


@dataclass(frozen=True)
class RedisMemory:
    """Redis' own account of its memory (INFO memory): bytes used, and `maxmemory`, the
    limit past which it refuses writes (0: none)."""

    used: int
    limit: int


@dataclass(frozen=True)
class ClusterReading:
    """One look at Redis: waiting jobs and live workers per queue, circuit per backend, and
    Redis' memory (None where INFO is not allowed, as on some managed services)."""

    queue_depth: dict[str, int]
    live_workers: dict[str, int]
    circuits: dict[str, str]  # backend -> closed | open | half_open
    memory: RedisMemory | None = None

    def circuit_open(self, backend: str) -> bool:
        return self.circuits.get(backend) == "open"


def read_cluster(
    client: redis.Redis, liveness: Liveness, backends: Iterable[tuple[str, str]]
) -> ClusterReading:
    """Read (backend, queue) pairs in two round trips: the backlog of each queue (jobs
    accepted and not started, whether their message still waits in Redis or a worker has
    reserved it), the circuit hash of each backend and INFO memory in one pipeline, then
    the live-worker counts."""
    pairs = list(dict.fromkeys(backends))
    queues = list(dict.fromkeys(q for _, q in pairs))
    names = list(dict.fromkeys(b for b, _ in pairs))
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.zcard(keys.queued_key(queue))
    for name in names:
        pipe.hget(keys.circuit_key(name), "state")
    pipe.info("memory")
    *raw, info = pipe.execute(raise_on_error=False)
    for reply in raw:
        if isinstance(reply, Exception):
            raise reply
    depths = {q: int(n) for q, n in zip(queues, raw[: len(queues)], strict=True)}
    circuits = {b: s or "closed" for b, s in zip(names, raw[len(queues) :], strict=True)}
    return ClusterReading(depths, liveness.live_counts(queues), circuits, _memory(info))


def _memory(info: object) -> RedisMemory | None:
    """INFO memory's reply as RedisMemory; None if the command was refused (a renamed or
    ACL-denied INFO must not cost the other gauges)."""
    if not isinstance(info, dict) or "used_memory" not in info:
        return None
    return RedisMemory(int(info["used_memory"]), int(info.get("maxmemory", 0)))


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


def json_logs_enabled(value: object) -> bool:
    """Whether a ROUTER_LOG_JSON value (env text, or Flask config already parsed) is on."""
    return str(value).strip().lower() in ("1", "true", "yes", "on")


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
    with ROUTER_LOG_JSON=1, the worker's log handlers write JSON lines."""
    env = os.environ if env is None else env
    if logger is not None and json_logs_enabled(env.get("ROUTER_LOG_JSON", "")):
        use_json_formatter(logger)
