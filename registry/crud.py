"""Writes to the registry used by the CLI and the admin API: models, aliases, backends,
deployments, policies and fallbacks.

Every function validates first and raises a `RegistryError` subclass with a message fit
for an operator; a unique-key race lost at commit becomes `ConcurrentChangeError`.
Removing a model also removes its deployments and drops it from other models' fallbacks.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

from registry.errors import (
    AliasInUseError,
    ConcurrentChangeError,
    DuplicateBackendError,
    DuplicateDeploymentError,
    DuplicateModelError,
    InvalidValueError,
    UnknownBackendError,
    UnknownDeploymentError,
    UnknownKindError,
    UnknownModelError,
)
from registry.models import DEFAULT_POLICY, KINDS, POLICIES, Alias, Backend, Deployment, Model
from registry.queries import (
    BackendInfo,
    ModelRoute,
    backend_info,
    decode_fallbacks,
    load_snapshot,
    model_route,
)

DEFAULT_CONTEXT_WINDOW = 8192
DEFAULT_MAX_TOKENS = 1024
#: Priority of an extra deployment unless given: after the primary, which is 0.
DEFAULT_DEPLOYMENT_PRIORITY = 1

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_name(what: str, value: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise InvalidValueError(f"{what} must be non-empty and contain no spaces, got {value!r}")


def _check_numbers(context_window: int, max_tokens: int, prices: dict[str, float]) -> None:
    for what, n in (("context_window", context_window), ("max_tokens", max_tokens)):
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise InvalidValueError(f"{what} must be a positive integer, got {n!r}")
    if max_tokens > context_window:
        raise InvalidValueError(
            f"max_tokens ({max_tokens}) must not exceed context_window ({context_window})"
        )
    for what, price in prices.items():
        if not isinstance(price, int | float) or not math.isfinite(price) or price < 0:
            raise InvalidValueError(f"{what} must be a finite number >= 0, got {price!r}")


def _check_free_id(session: Session, model_id: str) -> None:
    if session.get(Model, model_id) is not None:
        raise DuplicateModelError(f"model {model_id!r} already exists")
    alias = session.get(Alias, model_id)
    if alias is not None:
        raise DuplicateModelError(f"{model_id!r} is already an alias of model {alias.model_id!r}")


def _check_free_aliases(session: Session, model_id: str, aliases: tuple[str, ...]) -> None:
    for a in aliases:
        _check_name("alias", a)
        if a == model_id:
            raise AliasInUseError(f"alias {a!r} is the model's own id")
    if len(set(aliases)) != len(aliases):
        raise AliasInUseError(f"aliases repeat: {', '.join(aliases)}")
    taken = session.exec(select(Alias).where(col(Alias.alias).in_(aliases))).first()
    if taken is not None:
        raise AliasInUseError(f"alias {taken.alias!r} already names model {taken.model_id!r}")
    clash = session.exec(select(Model.id).where(col(Model.id).in_(aliases))).first()
    if clash is not None:
        raise AliasInUseError(f"alias {clash!r} is the id of an existing model")


def _commit(session: Session, what: str) -> None:
    try:
        session.commit()
    except IntegrityError as err:
        session.rollback()
        raise ConcurrentChangeError(f"{what} changed concurrently; try again") from err


def _get_backend(session: Session, name: str) -> Backend:
    row = session.get(Backend, name)
    if row is None:
        known = ", ".join(session.exec(select(Backend.name).order_by(Backend.name)))
        raise UnknownBackendError(f"unknown backend {name!r} (known: {known or 'none'})")
    return row


def add_model(
    engine: Engine,
    id: str,
    backend: str,
    upstream: str | None = None,
    context_window: int = DEFAULT_CONTEXT_WINDOW,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    input_price: float = 0.0,
    output_price: float = 0.0,
    aliases: Iterable[str] = (),
    policy: str = DEFAULT_POLICY,
    fallbacks: Iterable[str] = (),
) -> ModelRoute:
    """Register model `id` on `backend` (served as `upstream`, default `id`) with aliases,
    a routing `policy` and `fallbacks` (ids or aliases of existing models)."""
    names = tuple(aliases)
    _check_name("model id", id)
    _check_name("upstream", upstream if upstream is not None else id)
    prices = {"input_price": input_price, "output_price": output_price}
    _check_numbers(context_window, max_tokens, prices)
    _check_policy(policy)
    with Session(engine) as session:
        row = _get_backend(session, backend)
        _check_free_id(session, id)
        _check_free_aliases(session, id, names)
        chain = _resolve_fallbacks(session, id, fallbacks)
        model = Model(
            id=id,
            backend=backend,
            upstream=upstream if upstream is not None else id,
            context_window=context_window,
            max_tokens=max_tokens,
            input_price=float(input_price),
            output_price=float(output_price),
            created_at=time.time(),
            policy=policy,
            fallbacks=json.dumps(chain),
        )
        route = model_route(model, row, names)
        session.add(model)
        session.flush()  # the model row must exist before aliases reference it
        session.add_all(Alias(alias=a, model_id=id) for a in names)
        _commit(session, f"model {id!r}")
    return route


def remove_model(engine: Engine, id: str) -> list[str]:
    """Delete model `id`, its aliases and deployments, and drop it from every other model's
    fallbacks; return the ids of the models whose fallbacks changed (sorted).

    `id` must be the id, not an alias: removal is not something to do by a second name.
    """
    with Session(engine) as session:
        if session.get(Model, id) is None:
            alias = session.get(Alias, id)
            hint = f"; it is an alias of {alias.model_id!r}" if alias is not None else ""
            raise UnknownModelError(f"unknown model {id!r}{hint}")
        changed = []
        for other in session.exec(select(Model).where(col(Model.fallbacks) != "[]")):
            chain = decode_fallbacks(other.fallbacks)
            if id in chain:
                other.fallbacks = json.dumps([f for f in chain if f != id])
                session.add(other)
                changed.append(other.id)
        session.exec(delete(Alias).where(col(Alias.model_id) == id))
        session.exec(delete(Deployment).where(col(Deployment.model_id) == id))
        session.exec(delete(Model).where(col(Model.id) == id))
        _commit(session, f"model {id!r}")  # e.g. a deployment added by another process
    return sorted(changed)


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise InvalidValueError(f"unknown policy {policy!r}; valid policies: {', '.join(POLICIES)}")


def _find_model(session: Session, name: str, what: str = "model") -> Model:
    """The model whose id or alias is `name`."""
    row = session.get(Model, name)
    if row is None:
        alias = session.get(Alias, name)
        row = session.get(Model, alias.model_id) if alias is not None else None
    if row is None:
        raise UnknownModelError(f"unknown {what} {name!r}")
    return row


def _resolve_fallbacks(session: Session, model_id: str, names: Iterable[str]) -> list[str]:
    """Fallback names as model ids, in order, duplicates dropped; each must exist and not be
    `model_id` itself (by id or by one of its aliases)."""
    chain: list[str] = []
    for name in names:
        target = name if name == model_id else _find_model(session, name, "fallback model").id
        if target == model_id:
            raise InvalidValueError(f"model {model_id!r} cannot fall back to itself ({name!r})")
        if target not in chain:
            chain.append(target)
    return chain


def set_model(
    engine: Engine,
    id: str,
    *,
    policy: str | None = None,
    fallbacks: Iterable[str] | None = None,
) -> ModelRoute:
    """Change the routing `policy` and/or replace the `fallbacks` (ids or aliases; `[]`
    clears them) of model `id` (or alias); None leaves a field as it is."""
    if policy is not None:
        _check_policy(policy)
    with Session(engine) as session:
        row = _find_model(session, id)
        model_id = row.id
        if fallbacks is not None:
            row.fallbacks = json.dumps(_resolve_fallbacks(session, model_id, fallbacks))
        if policy is not None:
            row.policy = policy
        session.add(row)
        _commit(session, f"model {model_id!r}")
    return _route(engine, model_id)


def _check_priority_weight(priority: int, weight: float) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise InvalidValueError(f"priority must be an integer >= 0, got {priority!r}")
    ok = isinstance(weight, int | float) and not isinstance(weight, bool)
    if not ok or not math.isfinite(weight) or weight <= 0:
        raise InvalidValueError(f"weight must be a finite number > 0, got {weight!r}")


def _route(engine: Engine, model_id: str) -> ModelRoute:
    route = load_snapshot(engine).resolve(model_id)
    if route is None:  # removed by another process since our commit
        raise UnknownModelError(f"unknown model {model_id!r}")
    return route


def add_deployment(
    engine: Engine,
    model_id: str,
    backend: str,
    upstream: str | None = None,
    priority: int = DEFAULT_DEPLOYMENT_PRIORITY,
    weight: float = 1.0,
) -> ModelRoute:
    """Serve model `model_id` (or alias) on one more `backend`, as `upstream` (default: the
    primary's upstream); a model is deployed at most once per backend, primary included."""
    _check_priority_weight(priority, weight)
    if upstream is not None:
        _check_name("upstream", upstream)
    with Session(engine) as session:
        row = _find_model(session, model_id)
        _get_backend(session, backend)
        if row.backend == backend:
            raise DuplicateDeploymentError(
                f"model {row.id!r} is already served by backend {backend!r} (its primary)"
            )
        if _get_deployment(session, row.id, backend) is not None:
            raise DuplicateDeploymentError(
                f"model {row.id!r} already has a deployment on backend {backend!r}"
            )
        session.add(
            Deployment(
                model_id=row.id,
                backend=backend,
                upstream=upstream if upstream is not None else row.upstream,
                priority=priority,
                weight=float(weight),
            )
        )
        found = row.id
        _commit(session, f"deployment of {found!r} on {backend!r}")
    return _route(engine, found)


def _get_deployment(session: Session, model_id: str, backend: str) -> Deployment | None:
    query = select(Deployment).where(
        col(Deployment.model_id) == model_id, col(Deployment.backend) == backend
    )
    return session.exec(query).first()


def remove_deployment(engine: Engine, model_id: str, backend: str) -> ModelRoute:
    """Stop serving model `model_id` (or alias) on `backend`; the primary cannot be removed."""
    with Session(engine) as session:
        row = _find_model(session, model_id)
        found = row.id
        if row.backend == backend:
            raise InvalidValueError(
                f"backend {backend!r} is the primary deployment of model {found!r} and cannot "
                "be undeployed; remove the model instead"
            )
        deployment = _get_deployment(session, found, backend)
        if deployment is None:
            query = select(Deployment.backend).where(col(Deployment.model_id) == found)
            others = sorted(session.exec(query))
            raise UnknownDeploymentError(
                f"model {found!r} has no deployment on backend {backend!r} "
                f"(primary: {row.backend}; others: {', '.join(others) or 'none'})"
            )
        session.delete(deployment)
        session.commit()
    return _route(engine, found)


def _check_backend_fields(
    name: str, kind: str, queue: str, base_url: str | None, api_key_env: str | None
) -> None:
    _check_name("backend name", name)
    if kind not in KINDS:
        raise UnknownKindError(f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    _check_name("queue", queue)
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise InvalidValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    if api_key_env is not None and not _ENV_NAME.fullmatch(api_key_env):
        raise InvalidValueError(
            "api_key_env must be the NAME of an environment variable (like OPENAI_API_KEY), "
            "never the key itself"
        )


def add_backend(
    engine: Engine,
    name: str,
    kind: str,
    queue: str | None = None,
    base_url: str | None = None,
    api_key_env: str | None = None,
    enabled: bool = True,
) -> BackendInfo:
    """Register a backend of `kind` consuming `queue` (default: its name)."""
    queue = queue if queue is not None else name
    _check_backend_fields(name, kind, queue, base_url, api_key_env)
    with Session(engine) as session:
        if session.get(Backend, name) is not None:
            raise DuplicateBackendError(f"backend {name!r} already exists")
        row = Backend(
            name=name,
            kind=kind,
            queue=queue,
            base_url=base_url,
            api_key_env=api_key_env,
            enabled=enabled,
            created_at=time.time(),
        )
        info = backend_info(row)
        session.add(row)
        _commit(session, f"backend {name!r}")
    return info


def set_backend_enabled(engine: Engine, name: str, enabled: bool) -> BackendInfo:
    """Enable or disable backend `name`; its models leave or rejoin the model list."""
    with Session(engine) as session:
        row = _get_backend(session, name)
        row.enabled = enabled
        info = backend_info(row)
        session.add(row)
        session.commit()
    return info
