"""SQLModel tables of the registry: backends, the models they serve, deployments and aliases.

Rows stay inside `registry`; callers get the frozen dataclasses of `registry.queries`.
Provider keys are never stored: a backend names the environment variable that holds one.
A model's own `backend`/`upstream` is its primary deployment (priority 0, weight 1); a
`Deployment` row is one more backend serving the same model.
"""

from __future__ import annotations

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from core import kinds
from registry.apikeys import ApiKey as ApiKey  # init_db creates its table
from registry.requestlog import RequestLog as RequestLog  # init_db creates its table

#: Backend kinds the workers implement: the rows of core.kinds.
KINDS: tuple[str, ...] = tuple(kinds.KINDS)

#: How a model picks among its live deployments; the first is the default.
POLICIES: tuple[str, ...] = ("priority", "least-loaded", "latency", "weighted")
DEFAULT_POLICY = POLICIES[0]


class Backend(SQLModel, table=True):
    """A place models run: one Celery queue, consumed by workers of one kind."""

    name: str = Field(primary_key=True)
    kind: str
    queue: str
    base_url: str | None = None
    api_key_env: str | None = None  # the NAME of the env var holding the key
    enabled: bool = True
    created_at: float


class Model(SQLModel, table=True):
    """A public model id, its primary backend, limits, list prices and routing choices."""

    id: str = Field(primary_key=True)
    backend: str = Field(foreign_key="backend.name", index=True)
    upstream: str  # the name the backend knows the model by
    context_window: int
    max_tokens: int  # default (and cap) for completion tokens
    input_price: float = 0.0  # USD per 1M input tokens
    output_price: float = 0.0  # USD per 1M output tokens
    created_at: float
    # Server defaults too, so rows written by an older release (no such columns) stay valid.
    policy: str = Field(default=DEFAULT_POLICY, sa_column_kwargs={"server_default": "priority"})
    fallbacks: str = Field(default="[]", sa_column_kwargs={"server_default": "[]"})  # JSON ids


class Deployment(SQLModel, table=True):
    """One more backend serving a model; (model, backend) is unique, primary included."""

    __table_args__ = (UniqueConstraint("model_id", "backend"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: str = Field(foreign_key="model.id", index=True)
    backend: str = Field(foreign_key="backend.name", index=True)
    upstream: str  # the name this backend knows the model by
    priority: int = 1  # the primary is 0; lower is tried first
    weight: float = 1.0  # share under the `weighted` policy; > 0


class Alias(SQLModel, table=True):
    """Another public name for a model; unique, and never equal to a model id."""

    alias: str = Field(primary_key=True)
    model_id: str = Field(foreign_key="model.id", index=True)
