"""Engine construction and first-run setup of the registry database.

`database_url` picks the URL from the environment, `make_engine` builds an engine tuned for
several processes sharing one SQLite file (WAL, busy timeout, foreign keys), and `init_db`
creates tables, adds columns that newer releases introduced to an older file, seeds an
empty registry and syncs env-gated backends. Nothing here runs at import time.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine, select

from core.settings import DEFAULTS, Settings
from registry.models import Backend
from registry.seed import apply_seed, load_seed, sync_env

log = logging.getLogger(__name__)

#: Relative to the working directory, like the rest of `.run/` (Redis data, logs).
DEFAULT_DATABASE_URL = DEFAULTS.database_url
#: How long a SQLite connection waits for another process's write lock before failing.
BUSY_TIMEOUT_MS = 10_000
#: Tries of the whole create/seed/sync step when another process races us (non-SQLite).
INIT_ATTEMPTS = 5

#: Columns added to existing tables after the first release: (table, column, DDL type and
#: default). `create_all` makes new tables but never alters old ones, so `init_db` adds any
#: of these a registry file lacks; the defaults match the SQLModel fields' server defaults.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("model", "policy", "VARCHAR NOT NULL DEFAULT 'priority'"),
    ("model", "fallbacks", "VARCHAR NOT NULL DEFAULT '[]'"),
)


def database_url(env: Mapping[str, str]) -> str:
    """The registry URL: `DATABASE_URL` if set and non-empty, else the local SQLite file
    (core.settings)."""
    return Settings.load(env).database_url


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a file-backed SQLite URL; None for other databases or memory."""
    if url.get_backend_name() != "sqlite":
        return None
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """Per-connection SQLite settings; busy_timeout first so the WAL switch waits too."""
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`; for SQLite also the parent directory and per-connection pragmas.

    In-memory SQLite gets one shared connection (StaticPool) so every session sees the
    same database.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    path = _sqlite_file(parsed)
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if path is None:
        kwargs["poolclass"] = StaticPool
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, **kwargs)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


@contextmanager
def _init_lock(engine: Engine) -> Iterator[None]:
    """Serialize init_db across processes with an flock on `<db file>.lock` (SQLite only)."""
    path = _sqlite_file(engine.url)
    if path is None:
        yield
        return
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def add_missing_columns(engine: Engine) -> list[str]:
    """ALTER TABLE ... ADD COLUMN for each of ADDED_COLUMNS the database lacks, so a
    registry created by an older release keeps working; return the `table.column`s added."""
    inspector = inspect(engine)
    have = {t: {c["name"] for c in inspector.get_columns(t)} for t in {a[0] for a in ADDED_COLUMNS}}
    missing = [(t, c, ddl) for t, c, ddl in ADDED_COLUMNS if c not in have[t]]
    if missing:
        with engine.begin() as conn:
            for table, column, ddl in missing:
                conn.execute(text(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {ddl}'))
    return [f"{t}.{c}" for t, c, _ in missing]


def _init_once(engine: Engine, env: Mapping[str, str], sync: bool) -> None:
    SQLModel.metadata.create_all(engine)
    added = add_missing_columns(engine)
    if added:
        log.info("registry migrated: added %s", ", ".join(added))
    seed = load_seed()
    with Session(engine) as session:
        if session.exec(select(Backend.name).limit(1)).first() is None:
            apply_seed(session, seed, env, time.time())
            log.info("registry seeded with %d models", len(seed.models))
        elif sync:
            changed = sync_env(session, seed, env)
            if changed:
                log.info("registry backends re-synced from env: %s", ", ".join(changed))
        session.commit()


def init_db(engine: Engine, env: Mapping[str, str], *, sync: bool = True) -> None:
    """Create tables, seed an empty registry, then (if `sync`) sync env-gated backends.

    Safe to call from several processes at once: SQLite callers take a lock file next to
    the database; for other databases a lost race (IntegrityError and kin) is retried.
    """
    with _init_lock(engine):
        for attempt in range(1, INIT_ATTEMPTS + 1):
            try:
                _init_once(engine, env, sync)
                return
            except (IntegrityError, OperationalError, ProgrammingError):
                # Another process created or seeded the same rows first; the retry re-reads.
                if attempt == INIT_ATTEMPTS:
                    raise
                log.info("registry init raced another process; retry %d", attempt)
                time.sleep(0.05 * attempt)
