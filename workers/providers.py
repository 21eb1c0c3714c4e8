"""Where and how a provider worker calls a backend: base URL, key, headers and timeouts,
from `providers.json` (what differs between providers, kept as data, not code branches)
and the worker's own environment (the only place keys live).

    settings = endpoint(job, env)     # for one job: base URL, key, headers, timeouts
    queue_kinds(["openai", "llm-d"])  # {"openai": "openai-compatible", "llm-d": "llm-d"}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from workers.errors import AuthenticationError, RouterError
from workers.protocol import ChatJob

DEFAULT_TIMEOUT = 120.0  # seconds between bytes from the upstream (read timeout)
CONNECT_TIMEOUT = 10.0


@cache
def provider_table() -> dict[str, dict[str, Any]]:
    """providers.json without its comment: backend name -> settings."""
    raw = json.loads(resources.files("workers").joinpath("providers.json").read_text())
    return {name: spec for name, spec in raw.items() if not name.startswith("_")}


def env_prefix(backend: str) -> str:
    spec = provider_table().get(backend, {})
    return str(spec.get("env_prefix") or backend.upper().replace("-", "_"))


def queue_kinds(queues: Iterable[str]) -> dict[str, str]:
    """The backend kind behind each known provider queue (queue = backend name)."""
    table = provider_table()
    return {q: table[q]["kind"] for q in queues if q in table}


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


def backend_endpoint(
    backend: str, env: Mapping[str, str], base_url: str | None = None, key_env: str | None = None
) -> Endpoint:
    """Settings of `backend` from providers.json and `env` (no job needed: health polls)."""
    spec, prefix = provider_table().get(backend, {}), env_prefix(backend)
    headers = {
        **spec.get("headers", {}),
        **_json_headers(env.get(f"{prefix}_HEADERS"), f"{prefix}_HEADERS"),
    }
    timeout = float(env.get(f"{prefix}_TIMEOUT") or spec.get("timeout") or DEFAULT_TIMEOUT)
    return Endpoint(
        backend=backend,
        base_url=env.get(f"{prefix}_BASE_URL") or base_url,
        key=env.get(key_env) if key_env else None,
        headers=headers,
        timeout=timeout,
    )


def endpoint(job: ChatJob, env: Mapping[str, str], *, key_required: bool = True) -> Endpoint:
    """Settings for one job: env overrides the registry's base URL; the key comes from the
    variable the registry names; llm-d-style backends add the forwarded request headers."""
    ep = backend_endpoint(job.backend, env, job.base_url, job.api_key_env)
    if key_required and not ep.key:
        what = job.api_key_env or f"{env_prefix(job.backend)}_API_KEY"
        raise AuthenticationError(
            f"The worker serving `{job.backend}` has no API key: set {what} in its environment.",
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
            {**ep.headers, **job.headers},
            ep.timeout,
            ep.connect_timeout,
        )
    return ep
