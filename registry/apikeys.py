"""API keys: who may call the router, which models they may use, and their limits.

A key's secret (`sk-ir-` and 43 URL-safe characters: 256 random bits) is shown once, when it
is created or rotated; only its SHA-256 is stored. A fast hash is right for a secret of that
entropy (nobody can guess one to match), and lets the API find the key of a request in a
dict of the registry snapshot, without a database read per request.

Callers get `KeyInfo` (a frozen dataclass), never the table row. `ApiKey` joins
`SQLModel.metadata` when this module is imported; `registry.models` imports it so that
`init_db` creates the table. Nothing here imports api, tasks, Flask, Celery or Redis.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import math
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, select

from registry.errors import ConcurrentChangeError, InvalidValueError, RegistryError

SECRET_PREFIX = "sk-ir-"
SECRET_BYTES = 32
SHOWN = len(SECRET_PREFIX) + 4  # characters of a secret kept to recognise it by: sk-ir-abcd
#: The name the admin key (ROUTER_ADMIN_KEY) is known by, in limits and records.
ADMIN = "admin"
#: Budget periods; each resets at its start in UTC (`total` never does).
PERIODS = ("day", "week", "month", "total")
DEFAULT_PERIOD = "month"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class UnknownKeyError(RegistryError):
    """No key by that name."""


class DuplicateKeyError(RegistryError):
    """A key by that name exists."""


class ApiKey(SQLModel, table=True):
    """One API key: its name, the SHA-256 of its secret, allowlist and limits."""

    __tablename__ = "api_key"

    name: str = Field(primary_key=True)
    secret_hash: str = Field(unique=True)  # hex SHA-256 of the secret
    shown: str  # the secret's first characters, to recognise it by
    models: str = "[]"  # JSON list of model ids; empty: every model
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget_usd: float | None = None
    budget_period: str = DEFAULT_PERIOD
    expires_at: float | None = None
    revoked_at: float | None = None
    created_at: float


@dataclass(frozen=True)
class KeyInfo:
    """A key as callers see it. `models` empty: every model; a None limit: none."""

    name: str
    secret_hash: str
    shown: str
    models: tuple[str, ...]
    rpm: int | None
    tpm: int | None
    max_parallel: int | None
    budget_usd: float | None
    budget_period: str
    expires_at: float | None
    revoked_at: float | None
    created_at: float

    def usable(self, now: float) -> bool:
        """Neither revoked nor expired at `now`."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def allows(self, model_id: str) -> bool:
        return not self.models or model_id in self.models

    @property
    def reserves(self) -> bool:
        """Whether an RPM, TPM or budget applies: only then does admission reserve anything
        (a Redis round trip); max-parallel is fair dispatch's to apply."""
        return any(v is not None for v in (self.rpm, self.tpm, self.budget_usd))

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.usable(now) else "expired"

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        """The key as `irouter keys list --json` and `GET /admin/keys` show it: never the
        secret nor its hash."""
        return {
            "name": self.name,
            "key": self.shown + "…",
            "status": self.status(time.time() if now is None else now),
            "models": list(self.models),
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_parallel": self.max_parallel,
            "budget_usd": self.budget_usd,
            "budget_period": self.budget_period,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "created_at": self.created_at,
        }


def key_info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        name=row.name,
        secret_hash=row.secret_hash,
        shown=row.shown,
        models=tuple(json.loads(row.models or "[]")),
        rpm=row.rpm,
        tpm=row.tpm,
        max_parallel=row.max_parallel,
        budget_usd=row.budget_usd,
        budget_period=row.budget_period,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        created_at=row.created_at,
    )


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def load_keys(session: Session) -> list[KeyInfo]:
    return [key_info(k) for k in session.exec(select(ApiKey))]


def _check_limit(what: str, n: int | None) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise InvalidValueError(f"{what} must be a positive integer, got {n!r}")


def _check(
    name: str,
    rpm: int | None,
    tpm: int | None,
    max_parallel: int | None,
    budget_usd: float | None,
    budget_period: str,
) -> None:
    if not _NAME.fullmatch(name or ""):
        raise InvalidValueError(
            "a key name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit; got {name!r}"
        )
    if name == ADMIN:
        raise InvalidValueError(f"{ADMIN!r} is the admin key's name; choose another")
    for what, n in (("rpm", rpm), ("tpm", tpm), ("max_parallel", max_parallel)):
        _check_limit(what, n)
    if budget_usd is not None and (
        isinstance(budget_usd, bool)
        or not isinstance(budget_usd, int | float)
        or not math.isfinite(budget_usd)
        or budget_usd < 0
    ):
        raise InvalidValueError(f"budget must be a finite number >= 0 (USD), got {budget_usd!r}")
    if budget_period not in PERIODS:
        raise InvalidValueError(
            f"budget period must be one of {', '.join(PERIODS)}, got {budget_period!r}"
        )


def parse_expiry(day: str | None) -> float | None:
    """`YYYY-MM-DD` as the epoch second the key stops working: the end of that day, UTC."""
    if not day:
        return None
    try:
        start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidValueError(f"expiry must be a date as YYYY-MM-DD, got {day!r}") from None
    return start.timestamp() + 86400


def create_key(
    engine: Engine,
    name: str,
    *,
    models: tuple[str, ...] = (),
    rpm: int | None = None,
    tpm: int | None = None,
    max_parallel: int | None = None,
    budget_usd: float | None = None,
    budget_period: str = DEFAULT_PERIOD,
    expires_at: float | None = None,
    secret: str | None = None,
) -> tuple[KeyInfo, str]:
    """A new key and its secret (shown once; pass `secret` to register one made elsewhere,
    such as a bootstrap key from a Secret). Model ids are not checked against the registry:
    a model added later under a listed id becomes usable then."""
    _check(name, rpm, tpm, max_parallel, budget_usd, budget_period)
    secret = secret or new_secret()
    if not secret.startswith(SECRET_PREFIX) or len(secret) < SHOWN + 16:
        raise InvalidValueError(f"a key's secret starts with {SECRET_PREFIX} and is long")
    row = ApiKey(
        name=name,
        secret_hash=hash_secret(secret),
        shown=secret[:SHOWN],
        models=json.dumps(sorted(set(models))),
        rpm=rpm,
        tpm=tpm,
        max_parallel=max_parallel,
        budget_usd=budget_usd,
        budget_period=budget_period,
        expires_at=expires_at,
        created_at=time.time(),
    )
    with Session(engine) as session:
        if session.get(ApiKey, name) is not None:
            raise DuplicateKeyError(f"key {name!r} already exists")
        session.add(row)
        _commit(session, name)
        return key_info(row), secret


def _commit(session: Session, name: str) -> None:
    try:
        session.commit()
    except IntegrityError as err:
        session.rollback()
        raise ConcurrentChangeError(f"key {name!r} changed concurrently; try again") from err


def _find(session: Session, name: str) -> ApiKey:
    row = session.get(ApiKey, name)
    if row is None:
        raise UnknownKeyError(f"no key named {name!r}")
    return row


def list_keys(engine: Engine) -> list[KeyInfo]:
    with Session(engine) as session:
        return sorted(load_keys(session), key=lambda k: k.name)


def get_key(engine: Engine, name: str) -> KeyInfo:
    with Session(engine) as session:
        return key_info(_find(session, name))


def revoke_key(engine: Engine, name: str) -> KeyInfo:
    """Stop a key working (within a second: the API's registry snapshot). Its records stay."""
    with Session(engine) as session:
        row = _find(session, name)
        if row.revoked_at is None:
            row.revoked_at = time.time()
            session.add(row)
            _commit(session, name)
            session.refresh(row)
        return key_info(row)


def rotate_key(engine: Engine, name: str) -> tuple[KeyInfo, str]:
    """A new secret for the key (the old one stops working); limits and usage stay."""
    secret = new_secret()
    with Session(engine) as session:
        row = _find(session, name)
        row.secret_hash, row.shown, row.revoked_at = hash_secret(secret), secret[:SHOWN], None
        session.add(row)
        _commit(session, name)
        session.refresh(row)
        return key_info(row), secret


def period_key(period: str, now: float) -> str:
    """The budget period `now` falls in, as a name: `day:2026-12-02`, `week:2026-W49`,
    `month:2026-12`, `total`."""
    t = time.gmtime(now)
    if period == "day":
        return time.strftime("day:%Y-%m-%d", t)
    if period == "week":
        year, week, _ = datetime.fromtimestamp(now, UTC).isocalendar()
        return f"week:{year}-W{week:02d}"
    if period == "month":
        return time.strftime("month:%Y-%m", t)
    return "total"


def period_seconds(period: str, now: float) -> int:
    """How long the spend of the period `now` falls in must be kept (0: for ever)."""
    if period == "day":
        return 86400
    if period == "week":
        return 7 * 86400
    if period == "month":
        t = time.gmtime(now)
        return calendar.monthrange(t.tm_year, t.tm_mon)[1] * 86400
    return 0
