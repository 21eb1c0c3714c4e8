"""Redis clients for the router's own keys, built once per process and reused.

Blocking stream readers need `socket_timeout=None`: redis-py 8 defaults to 5 s, which
would kill every `XREAD BLOCK` longer than that (see shared/bench/FINDINGS.md).
"""

from __future__ import annotations

import redis


def redis_client(url: str, *, max_connections: int | None = None) -> redis.Redis:
    """A client with its own pool: decoded strings, fast connect timeout, no read timeout."""
    pool = redis.ConnectionPool.from_url(
        url,
        decode_responses=True,
        socket_timeout=None,
        socket_connect_timeout=1.0,
        socket_keepalive=True,
        health_check_interval=30,
        max_connections=max_connections,
    )
    return redis.Redis(connection_pool=pool)
