"""SQLModel tables of the registry: backends, the models they serve, and model aliases.

Rows stay inside `registry`; callers get the frozen dataclasses of `registry.queries`.
Provider keys are never stored: a backend names the environment variable that holds one.
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel

#: Backend kinds the workers implement (one worker module per kind).
KINDS: tuple[str, ...] = ("local", "openai-compatible", "anthropic", "google", "llm-d")


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
    """A public model id, the backend serving it, and its limits and list prices."""

    id: str = Field(primary_key=True)
    backend: str = Field(foreign_key="backend.name", index=True)
    upstream: str  # the name the backend knows the model by
    context_window: int
    max_tokens: int  # default (and cap) for completion tokens
    input_price: float = 0.0  # USD per 1M input tokens
    output_price: float = 0.0  # USD per 1M output tokens
    created_at: float


class Alias(SQLModel, table=True):
    """Another public name for a model; unique, and never equal to a model id."""

    alias: str = Field(primary_key=True)
    model_id: str = Field(foreign_key="model.id", index=True)
