"""What an API key used, from the request log: requests, tokens and cost in total, by model
and by UTC day, over the last few days. `irouter keys usage` and `GET /admin/keys/<name>/usage`
both read it here, so the two always agree.

The database does the counting: one SELECT grouped by model and day returns a row per
(model, day) pair, however many requests the key made; the totals by model, by day and
overall are sums of those few rows.

A key's budget is counted elsewhere (in Redis, where the API reserves and settles it);
`Spend` is only its shape here, filled by the caller, as nothing in the registry imports
Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine, Integer, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import col

from registry.apikeys import KeyInfo, period_key
from registry.errors import InvalidValueError
from registry.requestlog import DAY, RequestLog

DEFAULT_DAYS = 30


class UtcDay(FunctionElement[int]):
    """The UTC day (days since 1970-01-01) of an epoch-seconds expression, in SQL."""

    type = Integer()
    name = "utc_day"
    inherit_cache = True


@compiles(UtcDay)
def _utc_day(element: UtcDay, compiler: Any, **kw: Any) -> str:
    return f"floor({compiler.process(element.clauses, **kw)} / {int(DAY)})"


@compiles(UtcDay, "sqlite")
def _utc_day_sqlite(element: UtcDay, compiler: Any, **kw: Any) -> str:
    # SQLite has floor() only when built with its math functions. CAST truncates toward
    # zero, which is floor for the log's times: all after 1970.
    return f"CAST({compiler.process(element.clauses, **kw)} / {int(DAY)} AS INTEGER)"


@dataclass(frozen=True)
class Totals:
    """Requests and what they used; cost at the registry's list prices when they ended."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.requests + other.requests,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cost_usd + other.cost_usd,
        )


@dataclass(frozen=True)
class KeyUsage:
    """A key's use since `since` (epoch seconds, `days` days before it was read).
    `by_model` is sorted by model id, `by_day` (`YYYY-MM-DD`, UTC) oldest first; a model
    or day without requests is absent."""

    name: str
    days: int
    since: float
    total: Totals
    by_model: tuple[tuple[str, Totals], ...]
    by_day: tuple[tuple[str, Totals], ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "days": self.days,
            "since": self.since,
            "total": asdict(self.total),
            "by_model": [{"model": m, **asdict(t)} for m, t in self.by_model],
            "by_day": [{"day": d, **asdict(t)} for d, t in self.by_day],
        }


@dataclass(frozen=True)
class Spend:
    """A key's budget and what its current period (`current`, such as `month:2026-12`) has
    spent and holds reserved for requests still running, in USD. `error` says why the
    amounts are unknown (Redis could not be reached); they are None then."""

    budget_usd: float | None
    period: str
    current: str
    spent_usd: float | None = None
    reserved_usd: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def budget_of(key: KeyInfo, now: float) -> Spend:
    """The key's budget and the period `now` falls in; the amounts are the caller's to read."""
    return Spend(key.budget_usd, key.budget_period, period_key(key.budget_period, now))


def usage_report(usage: KeyUsage, spend: Spend) -> dict[str, Any]:
    """What `irouter keys usage --json` prints and `GET /admin/keys/<name>/usage` answers."""
    return {**usage.as_dict(), "budget": spend.as_dict()}


def check_days(days: object) -> int:
    """`days` as a positive whole number of days, else InvalidValueError."""
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise InvalidValueError(f"days must be a positive integer, got {days!r}")
    return days


def day_label(day: int) -> str:
    """A UTC day number as `YYYY-MM-DD`."""
    return time.strftime("%Y-%m-%d", time.gmtime(day * DAY))


def key_usage(
    engine: Engine, name: str, days: int = DEFAULT_DAYS, now: float | None = None
) -> KeyUsage:
    """What key `name` used in the `days` days before `now` (default: the present). The
    name is not checked against the keys: a deleted key's records still count."""
    days = check_days(days)
    since = (time.time() if now is None else now) - days * DAY
    groups = list(_grouped(engine, name, since))
    return KeyUsage(
        name=name,
        days=days,
        since=since,
        total=sum((t for _, _, t in groups), Totals()),
        by_model=_sum_by(((model, t) for model, _, t in groups)),
        by_day=_sum_by(((day_label(day), t) for _, day, t in groups)),
    )


def _grouped(engine: Engine, name: str, since: float) -> Iterable[tuple[str, int, Totals]]:
    """(model, UTC day, totals) of the key's requests since `since`, one row per pair."""
    day = UtcDay(col(RequestLog.time)).label("day")
    stmt = (
        select(
            col(RequestLog.model),
            day,
            func.count(),
            func.coalesce(func.sum(col(RequestLog.prompt_tokens)), 0),
            func.coalesce(func.sum(col(RequestLog.completion_tokens)), 0),
            func.coalesce(func.sum(col(RequestLog.cost_usd)), 0.0),
        )
        .where(col(RequestLog.key_name) == name, col(RequestLog.time) >= since)
        .group_by(col(RequestLog.model), day)
    )
    with engine.connect() as conn:
        for model, d, n, prompt, completion, cost in conn.execute(stmt):
            yield model, int(d), Totals(int(n), int(prompt), int(completion), float(cost))


def _sum_by(pairs: Iterable[tuple[str, Totals]]) -> tuple[tuple[str, Totals], ...]:
    sums: dict[str, Totals] = {}
    for label, totals in pairs:
        sums[label] = sums.get(label, Totals()) + totals
    return tuple(sorted(sums.items()))
