"""Writes to the registry used by the CLI and the admin API: models, aliases, backends.

Every function validates first and raises a `RegistryError` subclass with a message fit
for an operator; a unique-key race lost at commit becomes `ConcurrentChangeError`.
"""

from __future__ import annotations

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
    DuplicateModelError,
    InvalidValueError,
    UnknownBackendError,
    UnknownKindError,
    UnknownModelError,
)
from registry.models import KINDS, Alias, Backend, Model
from registry.queries import BackendInfo, ModelRoute, backend_info, model_route

DEFAULT_CONTEXT_WINDOW = 8192
DEFAULT_MAX_TOKENS = 1024

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
) -> ModelRoute:
    """Register model `id` on `backend` (served as `upstream`, default `id`) with aliases."""
    names = tuple(aliases)
    _check_name("model id", id)
    _check_name("upstream", upstream if upstream is not None else id)
    prices = {"input_price": input_price, "output_price": output_price}
    _check_numbers(context_window, max_tokens, prices)
    with Session(engine) as session:
        row = _get_backend(session, backend)
        _check_free_id(session, id)
        _check_free_aliases(session, id, names)
        model = Model(
            id=id,
            backend=backend,
            upstream=upstream if upstream is not None else id,
            context_window=context_window,
            max_tokens=max_tokens,
            input_price=float(input_price),
            output_price=float(output_price),
            created_at=time.time(),
        )
        route = model_route(model, row, names)
        session.add(model)
        session.flush()  # the model row must exist before aliases reference it
        session.add_all(Alias(alias=a, model_id=id) for a in names)
        _commit(session, f"model {id!r}")
    return route


def remove_model(engine: Engine, id: str) -> None:
    """Delete model `id` and its aliases."""
    with Session(engine) as session:
        if session.get(Model, id) is None:
            alias = session.get(Alias, id)
            hint = f"; it is an alias of {alias.model_id!r}" if alias is not None else ""
            raise UnknownModelError(f"unknown model {id!r}{hint}")
        session.exec(delete(Alias).where(col(Alias.model_id) == id))
        session.exec(delete(Model).where(col(Model.id) == id))
        session.commit()


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
