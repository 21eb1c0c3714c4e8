"""Where and how a provider worker calls a backend: base URL, key, headers and timeouts,
from `providers.json` (what differs between providers, kept as data, not code branches)
and the worker's own environment (the only place keys live).

    settings = endpoint(job, env)     # for one job: base URL, key, headers, timeouts
    queue_kind("openai", env)         # "openai-compatible": what a worker serves on a queue
    pass_through("openai", "openai-compatible")  # the request fields its jobs may carry
    allowed_extra(job)                # job.extra without what its backend may not get

A worker trusts only itself: whoever can write to Redis can write a job, so nothing in a
job picks where a request goes or which variable is read. The base URL is
`<PREFIX>_BASE_URL` or providers.json's `base_url`, never the job's; the key is
`<PREFIX>_API_KEY`, or the variable the registry names (`job.api_key_env`) only when the
worker's ROUTER_KEY_ENV_ALLOWLIST lists it (docs/providers.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from workers.errors import AuthenticationError, RouterError
from workers.protocol import ChatJob

DEFAULT_TIMEOUT = 120.0  # seconds between bytes from the upstream (read timeout)
CONNECT_TIMEOUT = 10.0

#: Comma-separated names of further variables a worker may read a backend's key from, when
#: the registry names one (an operator-added backend's `--key-env`).
KEY_ALLOWLIST = "ROUTER_KEY_ENV_ALLOWLIST"

#: Headers a worker sets itself (credentials, framing): a forwarded client header never
#: replaces one, nor one of the backend's static headers.
OWN_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "x-goog-api-key",
        "host",
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
    }
)


@cache
def _raw_table() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(
        resources.files("workers").joinpath("providers.json").read_text()
    )
    return parsed


@cache
def provider_table() -> dict[str, dict[str, Any]]:
    """providers.json without its comment and kinds: backend name -> settings."""
    return {name: spec for name, spec in _raw_table().items() if not name.startswith("_")}


def kind_table() -> dict[str, dict[str, Any]]:
    """providers.json's `_kinds`: backend kind -> what every backend of that kind shares."""
    kinds: dict[str, dict[str, Any]] = _raw_table()["_kinds"]
    return kinds


@cache
def _kind_fields(kind: str) -> frozenset[str]:
    spec = kind_table().get(kind, {})
    base = _kind_fields(spec["extends"]) if spec.get("extends") else frozenset()
    return base | frozenset(spec.get("pass_through", ()))


@cache
def pass_through(backend: str, kind: str) -> frozenset[str]:
    """The request fields (beyond those the router reads itself) that a job for `backend`,
    of `kind`, carries to its worker: its kind's list plus its own, from providers.json.
    An operator-added backend, not in the file, gets its kind's list."""
    own = provider_table().get(backend, {}).get("pass_through", ())
    return _kind_fields(kind) | frozenset(own)


@cache
def known_pass_through() -> frozenset[str]:
    """Every field some backend may be passed: with OpenAI's own, what a request may hold."""
    lists = [_kind_fields(kind) for kind in kind_table()]
    lists += [frozenset(spec.get("pass_through", ())) for spec in provider_table().values()]
    return frozenset().union(*lists)


def passed(extra: Mapping[str, Any], backend: str, kind: str) -> dict[str, Any]:
    """`extra` without the fields `backend` may not be passed: what the API stores in a
    job, and what a worker sends on (a job written straight into Redis cannot smuggle what
    the API would have dropped)."""
    allowed = pass_through(backend, kind)
    return {name: value for name, value in extra.items() if name in allowed}


def allowed_extra(job: ChatJob) -> dict[str, Any]:
    """`job.extra` as its backend may be passed it."""
    return passed(job.extra, job.backend, job.kind)


def env_prefix(backend: str) -> str:
    spec = provider_table().get(backend, {})
    return str(spec.get("env_prefix") or backend.upper().replace("-", "_"))


def queue_kind(queue: str, env: Mapping[str, str]) -> str:
    """The backend kind a worker serves on `queue`, from its own configuration: a provider
    queue's kind in providers.json; an operator-added queue's `<PREFIX>_KIND` in `env`
    (e.g. MINE_KIND=openai-compatible); any other queue is a local model's."""
    spec = provider_table().get(queue)
    if spec is not None:
        return str(spec["kind"])
    return env.get(f"{env_prefix(queue)}_KIND") or "local"


@dataclass(frozen=True)
class Endpoint:
    """One backend as a worker reaches it. `key` stays in the worker process."""

    backend: str
    base_url: str | None
    key: str | None = field(repr=False)
    headers: dict[str, str]
    timeout: float
    connect_timeout: float = CONNECT_TIMEOUT

    def secrets(self) -> list[str]:
        """Values that must never be relayed (scrubbed from upstream error messages)."""
        return [self.key] if self.key else []


def _json_headers(raw: str | None, name: str) -> dict[str, str]:
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise RouterError(
            f"{name} must be a JSON object of header names to values.", code="worker_misconfigured"
        )
    return {str(k): str(v) for k, v in parsed.items()}


def key_env(backend: str, named: str | None, env: Mapping[str, str]) -> str:
    """The variable this worker reads `backend`'s key from: its own `<PREFIX>_API_KEY`, or
    `named` (the registry's `api_key_env`) when that is the same or the worker's
    ROUTER_KEY_ENV_ALLOWLIST lists it. Any other name is refused, never read."""
    own = f"{env_prefix(backend)}_API_KEY"
    if not named or named == own:
        return own
    if named in {name.strip() for name in env.get(KEY_ALLOWLIST, "").split(",")}:
        return named
    raise RouterError(
        f"The worker serving `{backend}` does not read keys from {named}: a backend's key "
        f"is {own}, or a variable listed in {KEY_ALLOWLIST} in the worker's environment.",
        code="key_env_not_allowed",
    )


def backend_endpoint(backend: str, env: Mapping[str, str], key_var: str | None = None) -> Endpoint:
    """Settings of `backend` from providers.json and `env` alone (no job needed: health
    polls): `<PREFIX>_BASE_URL` or the table's `base_url`, the key from `key_var` (default
    `<PREFIX>_API_KEY`), static headers and timeouts."""
    spec, prefix = provider_table().get(backend, {}), env_prefix(backend)
    headers = {
        **spec.get("headers", {}),
        **_json_headers(env.get(f"{prefix}_HEADERS"), f"{prefix}_HEADERS"),
    }
    timeout = float(env.get(f"{prefix}_TIMEOUT") or spec.get("timeout") or DEFAULT_TIMEOUT)
    return Endpoint(
        backend=backend,
        base_url=env.get(f"{prefix}_BASE_URL") or spec.get("base_url"),
        key=env.get(key_var or f"{prefix}_API_KEY") or None,
        headers=headers,
        timeout=timeout,
    )


def forwarded(headers: Mapping[str, str], static: Mapping[str, str]) -> dict[str, str]:
    """The forwarded client `headers` that replace nothing the worker sets itself."""
    taken = OWN_HEADERS | {name.lower() for name in static}
    return {k: v for k, v in headers.items() if k.lower() not in taken}


def endpoint(job: ChatJob, env: Mapping[str, str], *, key_required: bool = True) -> Endpoint:
    """Settings for one job from this worker's own configuration of `job.backend`: never
    the job's base URL, its key variable only as `key_env` allows; llm-d-style backends add
    the forwarded request headers that replace none of the worker's own."""
    name = key_env(job.backend, job.api_key_env, env)
    ep = backend_endpoint(job.backend, env, name)
    if key_required and not ep.key:
        raise AuthenticationError(
            f"The worker serving `{job.backend}` has no API key: set {name} in its environment.",
            code="missing_api_key",
        )
    if not ep.base_url:
        raise RouterError(
            f"The worker serving `{job.backend}` has no base URL: set "
            f"{env_prefix(job.backend)}_BASE_URL in its environment.",
            code="worker_misconfigured",
        )
    if provider_table().get(job.backend, {}).get("forward_request_headers"):
        ep = Endpoint(
            ep.backend,
            ep.base_url,
            ep.key,
            {**ep.headers, **forwarded(job.headers, ep.headers)},
            ep.timeout,
            ep.connect_timeout,
        )
    return ep
