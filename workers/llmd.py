"""The llm-d backend: an llm-d inference gateway or a vLLM OpenAI server at LLMD_BASE_URL,
spoken to like any OpenAI-compatible upstream, plus discovery of what it serves.

A daemon thread polls `<base without /v1>/health` and `<base>/models` every
LLMD_POLL_INTERVAL seconds and keeps the last answer; `announce()` (the worker heartbeat)
only reads it. The polls are two small GETs through urllib3, pooled and proxied as the chat
client's requests are (workers/openai_http.py). The key (LLMD_API_KEY) is optional;
forwarded request headers (routing hints) and LLMD_HEADERS go with every request.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError

from workers.openai_compat import OpenAICompatBackend
from workers.openai_http import USER_AGENT, _pool_for
from workers.providers import Endpoint, backend_endpoint, env_prefix
from workers.upstream import scrub

log = logging.getLogger(__name__)

BACKEND = "llm-d"
DEFAULT_POLL_INTERVAL = 10.0  # seconds
POLL_TIMEOUT = 5.0  # seconds per discovery request; a slow gateway counts as unreachable


@dataclass(frozen=True)
class Discovery:
    """The last poll's result: healthy, and each served model's max_model_len (or None)."""

    healthy: bool = False
    models: dict[str, int | None] = field(default_factory=dict)
    reason: str = "not polled yet"


def health_url(base_url: str) -> str:
    """vLLM's /health lives beside /v1, not under it."""
    base = base_url.rstrip("/")
    return (base[: -len("/v1")] if base.endswith("/v1") else base) + "/health"


def parse_models(body: Any) -> dict[str, int | None]:
    """An OpenAI model list -> {id: max_model_len (vLLM adds it) or None}."""
    data = body.get("data") if isinstance(body, Mapping) else None
    if not isinstance(data, list):
        raise ValueError("the model list has no `data` array")
    models: dict[str, int | None] = {}
    for entry in data:
        if isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
            size = entry.get("max_model_len")
            models[entry["id"]] = size if isinstance(size, int) else None
    return models


class Poller(threading.Thread):
    """Polls the upstream's health and model list until `stop()`; never raises."""

    def __init__(self, ep: Endpoint, interval: float) -> None:
        super().__init__(name="llmd-discovery", daemon=True)
        assert ep.base_url is not None
        self.base_url, self.interval, self.secrets = ep.base_url, interval, ep.secrets()
        auth = {"Authorization": f"Bearer {ep.key}"} if ep.key else {}
        self.headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        self.headers.update({**ep.headers, **auth})
        self.timeout = urllib3.Timeout(connect=POLL_TIMEOUT, read=POLL_TIMEOUT)
        # made by the first poll, so that a malformed URL is a reason it reports, not a
        # crash of the worker at start-up
        self.http: urllib3.PoolManager | None = None
        self.last = Discovery()
        self._stopped = threading.Event()

    def get(self, url: str) -> urllib3.BaseHTTPResponse:
        """One GET, read whole; no retries or redirects (the next poll is the retry)."""
        if self.http is None:
            self.http = _pool_for(url)
        return self.http.request(
            "GET", url, headers=self.headers, timeout=self.timeout, retries=False, redirect=False
        )

    def poll(self) -> Discovery:
        """One round: health (a 404 is no verdict: gateways may not serve it), then models."""
        try:
            health = self.get(health_url(self.base_url))
            if health.status != 404 and health.status >= 300:
                return Discovery(reason=f"health check answered HTTP {health.status}")
            listing = self.get(self.base_url.rstrip("/") + "/models")
        except (HTTPError, ValueError) as exc:  # refused, timed out, cut; a malformed URL
            return Discovery(reason=f"unreachable: {type(exc).__name__}: {exc}")
        if listing.status != 200:
            return Discovery(reason=f"model list answered HTTP {listing.status}")
        try:
            return Discovery(True, parse_models(json.loads(listing.data)))
        except ValueError as exc:  # JSONDecodeError included
            return Discovery(reason=f"bad model list: {exc}")

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                found = self.poll()
            except Exception as exc:  # noqa: BLE001 - discovery must outlive any surprise
                found = Discovery(reason=f"poll failed: {type(exc).__name__}: {exc}")
            self._note(found)
            self.last = found  # one reference swap: readers never see a half-made result
            self._stopped.wait(self.interval)
        if self.http is not None:
            self.http.clear()

    def _note(self, found: Discovery) -> None:
        """Log state changes only: a down gateway polled every few seconds stays quiet."""
        before = self.last
        if found.healthy and not before.healthy:
            log.info("llm-d at %s: healthy, serving %s", self.base_url, sorted(found.models))
        elif not found.healthy and (before.healthy or before.reason != found.reason):
            log.warning("llm-d at %s: %s", self.base_url, scrub(found.reason, self.secrets))

    def stop(self, wait: float = 1.0) -> None:
        self._stopped.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(wait)


class LlmdBackend(OpenAICompatBackend):
    """OpenAI-compatible streaming to llm-d / vLLM, with model discovery for the heartbeat."""

    key_required = False
    placeholder_key = "EMPTY"  # what vLLM's docs send when the server wants no key

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__(env)
        self.poller: Poller | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], concurrency: int | None = None) -> LlmdBackend:
        """The backend, polling LLMD_BASE_URL every LLMD_POLL_INTERVAL s when it is set."""
        backend = cls(env)
        prefix = env_prefix(BACKEND)
        if env.get(f"{prefix}_BASE_URL"):
            ep = backend_endpoint(BACKEND, env)  # LLMD_BASE_URL, LLMD_API_KEY (optional)
            interval = float(env.get(f"{prefix}_POLL_INTERVAL") or DEFAULT_POLL_INTERVAL)
            backend.poller = Poller(ep, interval)
            backend.poller.start()
        return backend

    def announce(self) -> dict[str, Any]:
        """What the heartbeat says: served models (none while unhealthy), each one's
        max_model_len as JSON, and health. Reads the last poll; never does I/O."""
        last = self.poller.last if self.poller else Discovery()
        models = last.models  # an unhealthy result carries none
        return {
            "models": sorted(models),
            "llmd_models": json.dumps(models, sort_keys=True),
            "llmd_healthy": "1" if last.healthy else "0",
        }

    def close(self) -> None:
        """Stop discovery and close the HTTP clients."""
        if self.poller:
            self.poller.stop()
        super().close()
