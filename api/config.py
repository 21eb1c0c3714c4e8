"""Configuration defaults. create_app applies, in order: these, `ROUTER_*` environment
variables (`ROUTER_WORKER_WAIT=5` -> WORKER_WAIT), then the mapping passed to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.settings import DEFAULT_REDIS_URL


def defaults(env: Mapping[str, str]) -> dict[str, Any]:
    """Defaults; REDIS_URL and DATABASE_URL keep their usual unprefixed names."""
    return {
        "REDIS_URL": env.get("REDIS_URL", DEFAULT_REDIS_URL),
        "DATABASE_URL": env.get("DATABASE_URL", "sqlite:///.run/router.db"),
        "ADMIN_KEY": None,  # when unset, /admin answers loopback clients only
        "WORKER_WAIT": 30.0,  # seconds to wait for a live worker on a queue before 503
        "REQUEST_TIMEOUT": 600.0,  # a completion not done by then gets 504 and is cancelled
        "JOB_TTL": 3600,  # seconds a finished job stays readable
        "IDEMPOTENCY_TTL": 86400,
        "REGISTRY_TTL": 1.0,  # registry changes are seen within this many seconds
        "KEEPALIVE": 15.0,  # SSE comment / WebSocket ping interval while idle
        # bigger bodies get 413 (so do bodies too large for every enabled model: api/http.py)
        "MAX_CONTENT_LENGTH": 1024 * 1024,
        # client request headers passed on to backends that forward them (llm-d routing:
        # session affinity); comma-separated, case-insensitive
        "FORWARD_HEADERS": "x-session-token",
        # a deployment whose Celery queue holds this many waiting jobs is skipped (0: never)
        "QUEUE_LIMIT": 200,
        # a job still queued after this many seconds moves to another usable deployment or
        # fallback model, if there is one (0: never)
        "QUEUE_WAIT": 20.0,
        # a synchronous request whose job would wait longer than this before a worker
        # starts it is refused at once (503, Retry-After) instead of queued (0: never)
        "QUEUE_TIMEOUT": 30.0,
        # this API process beats this often in Redis; the synchronous jobs it holds are
        # dropped by workers within three beats of its death
        "HEARTBEAT_INTERVAL": 2.0,
        "LOG_JSON": False,  # one JSON object per log line, with request and job ids
        "LOG_LEVEL": "INFO",
        "REQUEST_LOG": True,  # write each completion to the registry's request log
        "REQUEST_LOG_QUEUE": 10000,  # entries waiting for the writer; more are dropped
        "REQUEST_LOG_BATCH": 500,
        # where the API binds (ROUTER_HOST, as the Procfile uses it): bound to loopback, it
        # answers only to the loopback names unless ALLOWED_HOSTS says otherwise
        "HOST": "127.0.0.1",
        # Host names the API answers to (comma list, `*`: any, `.example.com`: a domain and
        # its subdomains); unset: localhost, 127.0.0.1, [::1] on loopback, any elsewhere
        "ALLOWED_HOSTS": None,
        # origins, besides the router's own, whose pages may open WebSockets and POST
        # (comma list of scheme://host[:port], `*`: any)
        "ALLOWED_ORIGINS": None,
        "WS_IDLE_TIMEOUT": 300.0,  # /v1/ws closes after this many seconds without a request
    }
