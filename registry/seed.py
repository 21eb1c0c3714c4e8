"""First-run registry contents (seed.json) and the env sync of seeded backends.

`apply_seed` fills an empty registry; `sync_env` runs on every start and sets each seeded
backend that declares `enable_if_env` to enabled exactly when that variable is non-empty,
so a provider lights up when its key is in the environment. Operator-added backends are
never touched. A seeded model may also carry a `policy`, `fallbacks` (ids or aliases of
other seeded models) and extra `deployments`, applied on first seeding only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from sqlmodel import Session

from registry.models import DEFAULT_POLICY, POLICIES, Alias, Backend, Deployment, Model
from registry.queries import BackendInfo


@dataclass(frozen=True)
class SeedBackend(BackendInfo):
    """A backend as seed.json declares it: `enable_if_env` names the variable whose
    presence turns it on at start."""

    enable_if_env: str | None


@dataclass(frozen=True)
class SeedDeployment:
    """An extra backend serving a seeded model; `upstream` None means the model's own."""

    backend: str
    upstream: str | None = None
    priority: int = 1
    weight: float = 1.0


@dataclass(frozen=True)
class SeedModel:
    """A model (with its aliases, routing policy, fallbacks and extra deployments) as
    seed.json declares it."""

    id: str
    backend: str
    upstream: str
    context_window: int
    max_tokens: int
    input_price: float
    output_price: float
    aliases: tuple[str, ...]
    policy: str = DEFAULT_POLICY
    fallbacks: tuple[str, ...] = ()
    deployments: tuple[SeedDeployment, ...] = ()


@dataclass(frozen=True)
class Seed:
    """The whole seed: backends and models, in file order."""

    backends: tuple[SeedBackend, ...]
    models: tuple[SeedModel, ...]

    def env_gates(self) -> dict[str, str]:
        """Backend name -> the env var that decides whether it is enabled."""
        return {b.name: b.enable_if_env for b in self.backends if b.enable_if_env}


def _backend(raw: Mapping[str, Any]) -> SeedBackend:
    return SeedBackend(
        name=raw["name"],
        kind=raw["kind"],
        queue=raw["queue"],
        base_url=raw.get("base_url"),
        api_key_env=raw.get("api_key_env"),
        enabled=bool(raw.get("enabled", True)),
        enable_if_env=raw.get("enable_if_env"),
    )


def _model(raw: Mapping[str, Any]) -> SeedModel:
    model = _model_fields(raw)
    if model.policy not in POLICIES:
        raise ValueError(f"seed model {model.id!r}: unknown policy {model.policy!r}")
    backends = [model.backend, *(d.backend for d in model.deployments)]
    if len(set(backends)) != len(backends):
        raise ValueError(f"seed model {model.id!r}: deployed twice on one backend")
    return model


def _model_fields(raw: Mapping[str, Any]) -> SeedModel:
    return SeedModel(
        id=raw["id"],
        backend=raw["backend"],
        upstream=raw.get("upstream", raw["id"]),
        context_window=int(raw["context_window"]),
        max_tokens=int(raw["max_tokens"]),
        input_price=float(raw.get("input_price", 0)),
        output_price=float(raw.get("output_price", 0)),
        aliases=tuple(raw.get("aliases", ())),
        policy=raw.get("policy", DEFAULT_POLICY),
        fallbacks=tuple(raw.get("fallbacks", ())),
        deployments=tuple(_deployment(d) for d in raw.get("deployments", ())),
    )


def _deployment(raw: Mapping[str, Any]) -> SeedDeployment:
    d = SeedDeployment(
        backend=raw["backend"],
        upstream=raw.get("upstream"),
        priority=int(raw.get("priority", 1)),
        weight=float(raw.get("weight", 1.0)),
    )
    if d.priority < 0 or not d.weight > 0 or d.weight == float("inf"):
        raise ValueError(f"seed deployment on {d.backend!r}: priority must be >= 0, weight > 0")
    return d


def parse_seed(raw: Mapping[str, Any]) -> Seed:
    """A Seed from the decoded JSON of a seed file; a bad policy, priority or weight, or a
    model deployed twice on one backend, raises ValueError."""
    return Seed(
        backends=tuple(_backend(b) for b in raw["backends"]),
        models=tuple(_model(m) for m in raw["models"]),
    )


@lru_cache(maxsize=1)
def load_seed() -> Seed:
    """Parse the packaged seed.json (once per process; the result is immutable)."""
    text = resources.files("registry").joinpath("seed.json").read_text(encoding="utf-8")
    return parse_seed(json.loads(text))


def fallback_ids(seed: Seed, model: SeedModel) -> list[str]:
    """`model`'s fallbacks as seeded model ids (aliases resolved), in order, without repeats;
    a name the seed does not define, or the model itself, raises ValueError."""
    ids = {m.id for m in seed.models}
    by_alias = {a: m.id for m in seed.models for a in m.aliases}
    chain: list[str] = []
    for name in model.fallbacks:
        target = name if name in ids else by_alias.get(name)
        if target is None:
            raise ValueError(f"seed model {model.id!r}: unknown fallback {name!r}")
        if target == model.id:
            raise ValueError(f"seed model {model.id!r} cannot fall back to itself ({name!r})")
        if target not in chain:
            chain.append(target)
    return chain


def _enabled(backend: SeedBackend, env: Mapping[str, str]) -> bool:
    if backend.enable_if_env:
        return bool(env.get(backend.enable_if_env))
    return backend.enabled


def apply_seed(session: Session, seed: Seed, env: Mapping[str, str], now: float) -> None:
    """Insert every seeded backend, model, alias and deployment; the caller checked the
    registry is empty."""
    for b in seed.backends:
        session.add(
            Backend(
                name=b.name,
                kind=b.kind,
                queue=b.queue,
                base_url=b.base_url,
                api_key_env=b.api_key_env,
                enabled=_enabled(b, env),
                created_at=now,
            )
        )
    session.flush()  # parents first: models reference backends, aliases reference models
    for m in seed.models:
        session.add(
            Model(
                id=m.id,
                backend=m.backend,
                upstream=m.upstream,
                context_window=m.context_window,
                max_tokens=m.max_tokens,
                input_price=m.input_price,
                output_price=m.output_price,
                created_at=now,
                policy=m.policy,
                fallbacks=json.dumps(fallback_ids(seed, m)),
            )
        )
    session.flush()
    for m in seed.models:
        session.add_all(Alias(alias=a, model_id=m.id) for a in m.aliases)
        session.add_all(
            Deployment(
                model_id=m.id,
                backend=d.backend,
                upstream=d.upstream if d.upstream is not None else m.upstream,
                priority=d.priority,
                weight=d.weight,
            )
            for d in m.deployments
        )


def sync_env(session: Session, seed: Seed, env: Mapping[str, str]) -> list[str]:
    """Set `enabled` of env-gated seeded backends from `env`; return the names changed."""
    changed = []
    for b in seed.backends:
        if not b.enable_if_env:
            continue
        row = session.get(Backend, b.name)
        want = _enabled(b, env)
        if row is not None and row.enabled != want:
            row.enabled = want
            session.add(row)
            changed.append(b.name)
    return changed
