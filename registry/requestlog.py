"""The request log: one row per finished chat completion (who, which model and backend,
how it ended, how long it took, tokens and what they cost), written in batches by the API
off the request path and read by `irouter log tail`.

Callers get `LogEntry` (a frozen dataclass), never the table row. `RequestLog` joins
`SQLModel.metadata` when this module is imported; `registry.models` imports it so that
`init_db` creates the table. Nothing here imports api, tasks, Flask, Celery or Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from sqlalchemy import Engine, insert
from sqlmodel import Field, Session, SQLModel, col, select

PER_MILLION = 1_000_000  # registry prices are USD per 1M tokens


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
