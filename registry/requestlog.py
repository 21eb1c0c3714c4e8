"""The request log: one row per finished chat completion (who, which model and backend,
how it ended, how long it took, tokens and what they cost), written in batches by the API
off the request path, read by `irouter log tail`, and kept for a retention period
(`DEFAULT_RETENTION_DAYS` unless ROUTER_REQUEST_LOG_RETENTION says otherwise): the API's
writer prunes older rows now and then, `irouter log prune` on demand.

Callers get `LogEntry` (a frozen dataclass), never the table row. `RequestLog` joins
`SQLModel.metadata` when this module is imported; `registry.models` imports it so that
`init_db` creates the table. Nothing here imports api, tasks, Flask, Celery or Redis.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from sqlalchemy import Engine, delete, insert
from sqlmodel import Field, Session, SQLModel, col, select

from core.settings import DEFAULTS

PER_MILLION = 1_000_000  # registry prices are USD per 1M tokens
DEFAULT_RETENTION_DAYS = DEFAULTS.request_log_retention  # ROUTER_REQUEST_LOG_RETENTION (0: all)
DAY = 86400.0
PRUNE_BATCH = 2000  # rows per DELETE transaction: a concurrent writer waits for one at most


class RequestLog(SQLModel, table=True):
    """One finished chat completion. `model` is the model asked for, `fallback` the model
    that answered instead (None when the one asked for answered)."""

    __tablename__ = "request_log"

    id: int | None = Field(default=None, primary_key=True)
    time: float = Field(index=True)  # epoch seconds at the end of the request
    request_id: str = Field(index=True)
    job_id: str | None = None
    key_name: str | None = None  # the API key's name, once keys exist
    model: str = Field(index=True)
    backend: str
    status: str  # HTTP status as text; "499" when the client went away or cancelled
    latency_ms: float
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    fallback: str | None = None


@dataclass(frozen=True)
class LogEntry:
    """A request-log row as callers see it; `id` is set once it is stored."""

    time: float
    request_id: str
    model: str
    backend: str
    status: str
    latency_ms: float
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    fallback: str | None = None
    job_id: str | None = None
    key_name: str | None = None
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_COLUMNS = tuple(f.name for f in fields(LogEntry) if f.name != "id")


def cost_usd(
    prompt_tokens: int, completion_tokens: int, input_price: float, output_price: float
) -> float:
    """What a completion cost at the registry's list prices (USD per 1M tokens)."""
    return (prompt_tokens * input_price + completion_tokens * output_price) / PER_MILLION


def write_entries(engine: Engine, entries: Sequence[LogEntry]) -> int:
    """Insert `entries` in one transaction (one executemany); returns how many."""
    if not entries:
        return 0
    rows = [{name: getattr(e, name) for name in _COLUMNS} for e in entries]
    with engine.begin() as conn:
        conn.execute(insert(RequestLog), rows)
    return len(rows)


def _entry(row: RequestLog) -> LogEntry:
    return LogEntry(id=row.id, **{name: getattr(row, name) for name in _COLUMNS})


def recent_entries(engine: Engine, limit: int) -> list[LogEntry]:
    """The last `limit` entries, oldest first (as a log reads)."""
    with Session(engine) as session:
        stmt = select(RequestLog).order_by(col(RequestLog.id).desc()).limit(max(limit, 0))
        rows = session.exec(stmt).all()
        return [_entry(r) for r in reversed(rows)]


def entries_after(engine: Engine, after_id: int, limit: int = 1000) -> list[LogEntry]:
    """Entries stored after the one with id `after_id`, oldest first (for `--follow`)."""
    with Session(engine) as session:
        stmt = (
            select(RequestLog)
            .where(col(RequestLog.id) > after_id)
            .order_by(col(RequestLog.id))
            .limit(limit)
        )
        return [_entry(r) for r in session.exec(stmt).all()]


def retention_cutoff(days: float, now: float | None = None) -> float:
    """The epoch time before which entries are older than `days` days."""
    return (time.time() if now is None else now) - days * DAY


def prune_entries(
    engine: Engine,
    before: float,
    *,
    batch: int = PRUNE_BATCH,
    max_batches: int | None = None,
    pause: float = 0.0,
) -> int:
    """Delete the entries whose time is before `before` (epoch seconds), oldest first, `batch`
    rows per transaction (through the time index) with `pause` seconds between them, so that
    writers and readers get the database in between; at most `max_batches` transactions
    (None: until none is left). Returns how many were deleted."""
    doomed = (
        select(RequestLog.id)
        .where(col(RequestLog.time) < before)
        .order_by(col(RequestLog.time))
        .limit(batch)
    )
    stmt = delete(RequestLog).where(col(RequestLog.id).in_(doomed))
    deleted, done = 0, 0
    while max_batches is None or done < max_batches:
        if done:
            time.sleep(pause)  # under gevent, lets the hub serve requests in between
        with engine.begin() as conn:
            count = conn.execute(stmt).rowcount
        deleted, done = deleted + count, done + 1
        if count < batch:
            break
    return deleted
