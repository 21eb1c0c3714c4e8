"""Read side of the registry: plain frozen views of models and backends, and a Snapshot.

`load_snapshot` reads the whole registry in five SELECTs (backends, models, aliases,
deployments, API keys) and answers every lookup from memory, so the API can rebuild it once a
second.
Callers never see SQLModel rows. Writes live in `registry.crud`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from types import MappingProxyType
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select

from registry.apikeys import KeyInfo, load_keys
from registry.models import DEFAULT_POLICY, Alias, Backend, Deployment, Model


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
class DeploymentInfo:
    """One backend serving a model: where its jobs go, what that backend calls the model,
    and how eagerly it is chosen. This is what routing picks and what a job is sent to.

    The primary deployment (the model's own backend) has priority 0 and weight 1.
    `enabled` is that backend's flag.
    """

    backend: str
    kind: str
    queue: str
    upstream: str
    base_url: str | None
    api_key_env: str | None
    enabled: bool
    priority: int = 0
    weight: float = 1.0


@dataclass(frozen=True)
class ModelRoute:
    """A model's own facts (limits, prices, aliases, policy, fallbacks) and where it runs.

    `deployments` is never empty: the primary first, then the others by (priority,
    backend). `created` is the epoch second for `/v1/models`; prices are USD per 1M
    tokens. `fallbacks` are model ids to try, in order, when no deployment of this model
    can serve (they may fall back in a cycle: callers must not revisit a model).
    """

    id: str
    context_window: int
    max_tokens: int
    input_price: float
    output_price: float
    aliases: tuple[str, ...]
    created: int
    deployments: tuple[DeploymentInfo, ...]
    policy: str = DEFAULT_POLICY
    fallbacks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.deployments:
            raise ValueError(f"model {self.id!r} has no deployment")

    @property
    def primary(self) -> DeploymentInfo:
        """The model's own backend, under the model's upstream name."""
        return self.deployments[0]

    @property
    def enabled(self) -> bool:
        """Whether any deployment's backend is enabled (else the model is hidden)."""
        return any(d.enabled for d in self.deployments)

    def live_deployments(self) -> tuple[DeploymentInfo, ...]:
        """The deployments whose backend is enabled, in `deployments` order."""
        return tuple(d for d in self.deployments if d.enabled)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """List-price cost of one request with these token counts."""
        return (prompt_tokens * self.input_price + completion_tokens * self.output_price) / 1e6

    def as_dict(self) -> dict[str, Any]:
        """The model as `GET /admin/models` and `irouter models list --json` show it
        (docs/api.md): the primary's backend, kind, queue, upstream, base_url and
        api_key_env at the top level, then every deployment in full."""
        p = self.primary
        return {
            "id": self.id,
            "backend": p.backend,
            "kind": p.kind,
            "queue": p.queue,
            "upstream": p.upstream,
            "context_window": self.context_window,
            "max_tokens": self.max_tokens,
            "input_price": self.input_price,
            "output_price": self.output_price,
            "aliases": list(self.aliases),
            "base_url": p.base_url,
            "api_key_env": p.api_key_env,
            "enabled": self.enabled,
            "created": self.created,
            "deployments": [asdict(d) for d in self.deployments],
            "policy": self.policy,
            "fallbacks": list(self.fallbacks),
        }


def decode_fallbacks(text: str | None) -> tuple[str, ...]:
    """The model ids stored in a `Model.fallbacks` JSON list; malformed text reads as none."""
    try:
        raw = json.loads(text or "[]")
    except ValueError:
        return ()
    if not isinstance(raw, list):
        return ()
    return tuple(dict.fromkeys(x for x in raw if isinstance(x, str)))


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


def deployment_info(
    backend: BackendInfo, upstream: str, priority: int = 0, weight: float = 1.0
) -> DeploymentInfo:
    """Freeze one deployment: `backend` serving the model as `upstream`."""
    return DeploymentInfo(
        backend=backend.name,
        kind=backend.kind,
        queue=backend.queue,
        upstream=upstream,
        base_url=backend.base_url,
        api_key_env=backend.api_key_env,
        enabled=backend.enabled,
        priority=priority,
        weight=weight,
    )


def _extras_in_order(extras: Iterable[DeploymentInfo]) -> list[DeploymentInfo]:
    return sorted(extras, key=lambda d: (d.priority, d.backend))


def model_route(
    model: Model,
    backend: Backend | BackendInfo,
    aliases: Iterable[str],
    extras: Iterable[DeploymentInfo] = (),
) -> ModelRoute:
    """Freeze a Model row with its primary backend, aliases (sorted) and extra deployments."""
    info = backend if isinstance(backend, BackendInfo) else backend_info(backend)
    return ModelRoute(
        id=model.id,
        context_window=model.context_window,
        max_tokens=model.max_tokens,
        input_price=model.input_price,
        output_price=model.output_price,
        aliases=tuple(sorted(aliases)),
        created=int(model.created_at),
        deployments=(deployment_info(info, model.upstream), *_extras_in_order(extras)),
        policy=model.policy or DEFAULT_POLICY,
        fallbacks=decode_fallbacks(model.fallbacks),
    )


class Snapshot:
    """An immutable, in-memory copy of the registry, answering lookups without the DB."""

    def __init__(
        self,
        routes: Iterable[ModelRoute],
        backends: Iterable[BackendInfo],
        keys: Iterable[KeyInfo] = (),
    ) -> None:
        ordered = sorted(routes, key=lambda r: r.id)
        self._routes = MappingProxyType({r.id: r for r in ordered})
        self._aliases = MappingProxyType({a: r.id for r in ordered for a in r.aliases})
        self._backends = tuple(sorted(backends, key=lambda b: b.name))
        self._keys = MappingProxyType({k.secret_hash: k for k in keys})

    @property
    def has_keys(self) -> bool:
        """Whether any API key exists, revoked and expired ones included."""
        return bool(self._keys)

    def key(self, secret_hash: str) -> KeyInfo | None:
        """The key whose secret has this SHA-256 (usable or not), else None."""
        return self._keys.get(secret_hash)

    def resolve(self, name: str) -> ModelRoute | None:
        """The model whose id or alias is exactly `name` (enabled or not), else None."""
        route = self._routes.get(name)
        if route is None and name in self._aliases:
            route = self._routes.get(self._aliases[name])
        return route

    def models(self, enabled_only: bool = True) -> list[ModelRoute]:
        """Models sorted by id; by default only those with an enabled deployment."""
        return [r for r in self._routes.values() if r.enabled or not enabled_only]

    @cached_property
    def largest_context_window(self) -> int:
        """The largest context window of an enabled model (0: none), once per snapshot."""
        return max((r.context_window for r in self.models()), default=0)

    def with_routes(self, extra: Iterable[ModelRoute]) -> Snapshot:
        """This snapshot plus `extra` routes (discovered ones); registry ids and aliases win."""
        taken = set(self._routes) | set(self._aliases)
        added = [r for r in extra if r.id not in taken]
        if not added:
            return self
        return Snapshot([*self._routes.values(), *added], self._backends, self._keys.values())

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
    """Read backends, models, aliases, deployments and API keys: five SELECTs in all,
    whatever the size.

    A fallback id that no longer names a model (a removal raced its write) is dropped.
    """
    with Session(engine) as session:
        backends = {b.name: backend_info(b) for b in session.exec(select(Backend))}
        models = list(session.exec(select(Model)))
        by_model: dict[str, list[str]] = {}
        for alias in session.exec(select(Alias)):
            by_model.setdefault(alias.model_id, []).append(alias.alias)
        extras: dict[str, list[DeploymentInfo]] = {}
        for d in session.exec(select(Deployment)):
            if d.backend in backends:  # foreign keys hold this; skip like an inner join would
                info = deployment_info(backends[d.backend], d.upstream, d.priority, d.weight)
                extras.setdefault(d.model_id, []).append(info)
        keys = load_keys(session)
    models = [m for m in models if m.backend in backends]
    ids = {m.id for m in models}
    routes = []
    for m in models:
        route = model_route(m, backends[m.backend], by_model.get(m.id, ()), extras.get(m.id, ()))
        if not set(route.fallbacks) <= ids:
            route = replace(route, fallbacks=tuple(f for f in route.fallbacks if f in ids))
        routes.append(route)
    return Snapshot(routes, backends.values(), keys)
