"""`/admin/keys`: API keys over HTTP, what `irouter keys` does from a shell.

Nested in the admin blueprint, so its guard (ROUTER_ADMIN_KEY, or loopback only) runs
before every route here. A secret appears in two answers only, those of create and rotate,
as `key`; every other answer shows a key as `KeyInfo.as_dict()`, which never holds it.

    GET  /admin/keys                      every key
    POST /admin/keys                      create one: 201, with its secret
    GET  /admin/keys/<name>               one key
    POST /admin/keys/<name>/revoke        revoke it
    POST /admin/keys/<name>/rotate        a new secret for it
    GET  /admin/keys/<name>/usage?days=N  requests, tokens and cost; its budget's spend

The API reads keys from its registry snapshot, so a change made here takes effect within
ROUTER_REGISTRY_TTL, as one made by the CLI does.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import orjson
import redis
from flask import Blueprint, Response, request

from api.errors import error_response
from api.http import json_response
from api.services import services
from registry.apikeys import (
    DEFAULT_PERIOD,
    DuplicateKeyError,
    KeyInfo,
    UnknownKeyError,
    create_key,
    get_key,
    list_keys,
    parse_expiry,
    revoke_key,
    rotate_key,
)
from registry.errors import ConcurrentChangeError, RegistryError
from registry.keyusage import (
    DEFAULT_DAYS,
    Spend,
    budget_of,
    check_days,
    key_usage,
    usage_report,
)
from tasks.tenants import NANO, Tenants
from workers.errors import ConflictError, InvalidRequestError, NotFoundError, RouterError

bp = Blueprint("keys", __name__, url_prefix="/keys")

#: Fields of a create request; any other is refused, so a misspelt limit is not lost.
CREATE_FIELDS = frozenset(
    {"name", "models", "rpm", "tpm", "max_parallel", "budget_usd", "budget_period", "expires"}
)


def http_error(err: RegistryError) -> RouterError:
    """A registry error as the client is told it: a key not found, a name taken, or a
    value out of range (the registry's one-line message says which)."""
    if isinstance(err, UnknownKeyError):
        return NotFoundError(str(err), code="key_not_found")
    if isinstance(err, DuplicateKeyError):
        return ConflictError(str(err), param="name", code="key_exists")
    if isinstance(err, ConcurrentChangeError):
        return ConflictError(str(err))
    return InvalidRequestError(str(err))


@bp.errorhandler(RegistryError)
def _registry_error(err: RegistryError) -> Response:
    return error_response(http_error(err).info())


def _body() -> dict[str, Any]:
    """The request's JSON object (the guard already made sure it is declared JSON)."""
    try:
        body = orjson.loads(request.get_data(cache=True) or b"{}")
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request ({exc.msg} at position {exc.pos})."
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return body


def _string(body: dict[str, Any], name: str, default: str | None = None) -> str | None:
    value = body.get(name, default)
    if value is not None and not isinstance(value, str):
        raise InvalidRequestError(f"`{name}` must be a string.", param=name)
    return value


def _model_ids(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("models") or []
    if not isinstance(value, list) or not all(isinstance(m, str) and m for m in value):
        raise InvalidRequestError(
            "`models` must be a list of model ids (empty or absent: every model).",
            param="models",
        )
    return tuple(value)


def _create_args(body: dict[str, Any]) -> dict[str, Any]:
    """create_key's arguments from a request body; the registry checks the limits' values."""
    unknown = sorted(set(body) - CREATE_FIELDS)
    if unknown:
        raise InvalidRequestError(
            f"Unknown field `{unknown[0]}`; a key has {', '.join(sorted(CREATE_FIELDS))}.",
            param=unknown[0],
        )
    name = _string(body, "name")
    if not name:
        raise InvalidRequestError("`name` is required.", param="name")
    return {
        "name": name,
        "models": _model_ids(body),
        "rpm": body.get("rpm"),
        "tpm": body.get("tpm"),
        "max_parallel": body.get("max_parallel"),
        "budget_usd": body.get("budget_usd"),
        "budget_period": _string(body, "budget_period", DEFAULT_PERIOD),
        "expires_at": parse_expiry(_string(body, "expires")),
    }


def _with_secret(key: KeyInfo, secret: str, status: int = 200) -> Response:
    return json_response({**key.as_dict(), "key": secret}, status)


@bp.get("")
def list_all() -> Response:
    now = time.time()
    data = [k.as_dict(now) for k in list_keys(services().engine)]
    return json_response({"object": "list", "data": data})


@bp.post("")
def create() -> Response:
    """Create a key; the answer holds its secret, which no later answer shows."""
    args = _create_args(_body())
    key, secret = create_key(services().engine, args.pop("name"), **args)
    return _with_secret(key, secret, 201)


@bp.get("/<name>")
def get_one(name: str) -> Response:
    return json_response(get_key(services().engine, name).as_dict())


@bp.post("/<name>/revoke")
def revoke(name: str) -> Response:
    return json_response(revoke_key(services().engine, name).as_dict())


@bp.post("/<name>/rotate")
def rotate(name: str) -> Response:
    """A new secret for the key, in `key`; the old one stops working."""
    key, secret = rotate_key(services().engine, name)
    return _with_secret(key, secret)


def _days() -> int:
    """`?days=`: a whole number of days, at least one (default 30)."""
    given = request.args.get("days", str(DEFAULT_DAYS))
    try:
        return check_days(int(given))
    except ValueError:  # not a number, or (InvalidValueError) below one
        raise InvalidRequestError(
            f"days must be a positive integer, got {given!r}.", param="days"
        ) from None


def _spend(key: KeyInfo, now: float) -> Spend:
    """The budget's current period as Redis counts it; when Redis is down the usage from
    the log is still worth answering, with the reason the amounts are missing."""
    spend = budget_of(key, now)
    try:
        spent, reserved = Tenants(services().redis).spend(key.name, spend.current)
    except redis.RedisError:
        return replace(spend, error="Redis is unavailable; the spend is unknown.")
    return replace(spend, spent_usd=spent / NANO, reserved_usd=reserved / NANO)


@bp.get("/<name>/usage")
def usage(name: str) -> Response:
    """Requests, tokens and cost in total, by model and by day (from the request log) over
    `?days=` (default 30), and the current budget period's spend."""
    engine, now = services().engine, time.time()
    key = get_key(engine, name)
    found = key_usage(engine, name, _days(), now)
    return json_response(usage_report(found, _spend(key, now)))
