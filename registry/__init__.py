"""The registry: backends, the models they serve (each on one or more deployments, with a
routing policy and fallback models) and their aliases, in SQLite via SQLModel.

Startup: `engine = make_engine(database_url(env)); init_db(engine, env)`. Reads go through
`load_snapshot(engine)` (four SELECTs, then in memory); writes through `registry.crud`.
Callers get frozen dataclasses (`ModelRoute`, `BackendInfo`), never table rows. This package
imports nothing from api, tasks, workers, Flask, Celery or Redis.
"""

from registry.crud import (
    DEFAULT_CONTEXT_WINDOW,
    DEFAULT_MAX_TOKENS,
    add_backend,
    add_deployment,
    add_model,
    remove_deployment,
    remove_model,
    set_backend_enabled,
    set_model,
)
from registry.db import DEFAULT_DATABASE_URL, database_url, init_db, make_engine
from registry.errors import (
    AliasInUseError,
    ConcurrentChangeError,
    DuplicateBackendError,
    DuplicateDeploymentError,
    DuplicateModelError,
    InvalidValueError,
    RegistryError,
    UnknownBackendError,
    UnknownDeploymentError,
    UnknownKindError,
    UnknownModelError,
)
from registry.models import KINDS, POLICIES, Alias, Backend, Deployment, Model
from registry.queries import BackendInfo, DeploymentInfo, ModelRoute, Snapshot, load_snapshot

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "DEFAULT_DATABASE_URL",
    "DEFAULT_MAX_TOKENS",
    "KINDS",
    "POLICIES",
    "Alias",
    "AliasInUseError",
    "Backend",
    "BackendInfo",
    "ConcurrentChangeError",
    "Deployment",
    "DeploymentInfo",
    "DuplicateBackendError",
    "DuplicateDeploymentError",
    "DuplicateModelError",
    "InvalidValueError",
    "Model",
    "ModelRoute",
    "RegistryError",
    "Snapshot",
    "UnknownBackendError",
    "UnknownDeploymentError",
    "UnknownKindError",
    "UnknownModelError",
    "add_backend",
    "add_deployment",
    "add_model",
    "database_url",
    "init_db",
    "load_snapshot",
    "make_engine",
    "remove_deployment",
    "remove_model",
    "set_backend_enabled",
    "set_model",
]
