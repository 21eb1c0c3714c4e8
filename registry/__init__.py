"""The registry: backends, the models they serve and their aliases, in SQLite via SQLModel.

Startup: `engine = make_engine(database_url(env)); init_db(engine, env)`. Reads go through
`load_snapshot(engine)` (three SELECTs, then in memory); writes through `registry.crud`.
Callers get frozen dataclasses (`ModelRoute`, `BackendInfo`), never table rows. This package
imports nothing from api, tasks, workers, Flask, Celery or Redis.
"""

from registry.crud import (
    DEFAULT_CONTEXT_WINDOW,
    DEFAULT_MAX_TOKENS,
    add_backend,
    add_model,
    remove_model,
    set_backend_enabled,
)
from registry.db import DEFAULT_DATABASE_URL, database_url, init_db, make_engine
from registry.errors import (
    AliasInUseError,
    ConcurrentChangeError,
    DuplicateBackendError,
    DuplicateModelError,
    InvalidValueError,
    RegistryError,
    UnknownBackendError,
    UnknownKindError,
    UnknownModelError,
)
from registry.models import KINDS, Alias, Backend, Model
from registry.queries import BackendInfo, ModelRoute, Snapshot, load_snapshot

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "DEFAULT_DATABASE_URL",
    "DEFAULT_MAX_TOKENS",
    "KINDS",
    "Alias",
    "AliasInUseError",
    "Backend",
    "BackendInfo",
    "ConcurrentChangeError",
    "DuplicateBackendError",
    "DuplicateModelError",
    "InvalidValueError",
    "Model",
    "ModelRoute",
    "RegistryError",
    "Snapshot",
    "UnknownBackendError",
    "UnknownKindError",
    "UnknownModelError",
    "add_backend",
    "add_model",
    "database_url",
    "init_db",
    "load_snapshot",
    "make_engine",
    "remove_model",
    "set_backend_enabled",
]
