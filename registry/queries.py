"""Read side of the registry: plain frozen views of models and backends, and a Snapshot.

`load_snapshot` reads the whole registry in three SELECTs and answers every lookup from
memory, so the API can rebuild it once a second. Callers never see SQLModel rows.
Writes (add/remove models, add/enable backends) live in `registry.crud`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from registry.models import Alias, Backend, Model


@dataclass(frozen=True)
class BackendInfo:
    """A backend as callers see it; `api_key_env` names the variable, never holds the key."""

    name: str
    kind: str
    queue: str
    base_url: str | None
    api_key_env: str | None
    enabled: bool


@dataclass(frozen=True)
class ModelRoute:
    """Everything needed to route one model: its backend, queue, limits and prices.

    `enabled` is the backend's flag; `created` is the epoch second for `/v1/models`.
    Prices are USD per 1M tokens.
    """

    id: str
    backend: str
    kind: str
    queue: str
    upstream: str
    context_window: int
    max_tokens: int
    input_price: float
    output_price: float
    aliases: tuple[str, ...]
    base_url: str | None
    api_key_env: str | None
    enabled: bool
    created: int

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """List-price cost of one request with these token counts."""
        return (prompt_tokens * self.input_price + completion_tokens * self.output_price) / 1e6


def backend_info(row: Backend) -> BackendInfo:
    """Freeze a Backend row."""
    return BackendInfo(
        name=row.name,
        kind=row.kind,
        queue=row.queue,
        base_url=row.base_url,
        api_key_env=row.api_key_env,
        enabled=row.enabled,
    )


def model_route(model: Model, backend: Backend, aliases: Iterable[str]) -> ModelRoute:
    """Freeze a Model row joined with its Backend row and its aliases (sorted)."""
    return ModelRoute(
        id=model.id,
        backend=backend.name,
        kind=backend.kind,
        queue=backend.queue,
        upstream=model.upstream,
        context_window=model.context_window,
        max_tokens=model.max_tokens,
        input_price=model.input_price,
        output_price=model.output_price,
        aliases=tuple(sorted(aliases)),
        base_url=backend.base_url,
        api_key_env=backend.api_key_env,
        enabled=backend.enabled,
        created=int(model.created_at),
    )


class Snapshot:
    """An immutable, in-memory copy of the registry, answering lookups without the DB."""

    def __init__(self, routes: Iterable[ModelRoute], backends: Iterable[BackendInfo]) -> None:
        ordered = sorted(routes, key=lambda r: r.id)
        self._routes = MappingProxyType({r.id: r for r in ordered})
        self._aliases = MappingProxyType({a: r.id for r in ordered for a in r.aliases})
        self._backends = tuple(sorted(backends, key=lambda b: b.name))

    def resolve(self, name: str) -> ModelRoute | None:
        """The model whose id or alias is exactly `name` (enabled or not), else None."""
        route = self._routes.get(name)
        if route is None and name in self._aliases:
            route = self._routes.get(self._aliases[name])
        return route

    def models(self, enabled_only: bool = True) -> list[ModelRoute]:
        """Models sorted by id; by default only those whose backend is enabled."""
        return [r for r in self._routes.values() if r.enabled or not enabled_only]

    def with_routes(self, extra: Iterable[ModelRoute]) -> Snapshot:
        """This snapshot plus `extra` routes (discovered ones); registry ids and aliases win."""
        taken = set(self._routes) | set(self._aliases)
        added = [r for r in extra if r.id not in taken]
        if not added:
            return self
        return Snapshot([*self._routes.values(), *added], self._backends)

    def backends(self) -> list[BackendInfo]:
        """All backends, sorted by name."""
        return list(self._backends)

    def backend(self, name: str) -> BackendInfo | None:
        """The backend called `name`, else None."""
        return next((b for b in self._backends if b.name == name), None)

    @property
    def aliases(self) -> Mapping[str, str]:
        """Alias -> model id, read-only."""
        return self._aliases


def load_snapshot(engine: Engine) -> Snapshot:
    """Read backends, models (joined to their backend) and aliases: three SELECTs in all."""
    with Session(engine) as session:
        backends = [backend_info(b) for b in session.exec(select(Backend))]
        on = col(Model.backend) == col(Backend.name)
        pairs = list(session.exec(select(Model, Backend).join(Backend, on)))
        by_model: dict[str, list[str]] = {}
        for alias in session.exec(select(Alias)):
            by_model.setdefault(alias.model_id, []).append(alias.alias)
        routes = [model_route(m, b, by_model.get(m.id, ())) for m, b in pairs]
    return Snapshot(routes, backends)
