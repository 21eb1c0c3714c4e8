"""Redis clients for the router's own keys, built once per process and reused.

Blocking stream readers need `socket_timeout=None`: redis-py 8 defaults to 5 s, which
would kill every `XREAD BLOCK` longer than that (docs/benchmarks.md). They also
hold a connection each while they wait, so a pool must be as large as the requests one
process can have waiting: redis-py 8 quietly caps a pool at 100 connections, which made an
API worker answer 503 to its 101st concurrent request (bench/overhead.py, open loop).
"""

from __future__ import annotations

import redis

#: Above gunicorn's 2000 connections per API worker (each waiting request blocks one) and
#: a gevent worker's 1000 jobs; well under Redis's default `maxclients` of 10000.
MAX_CONNECTIONS = 4096


def redis_client(url: str, *, max_connections: int | None = None) -> redis.Redis:
    """A client with its own pool: decoded strings, fast connect timeout, no read timeout."""
    pool = redis.ConnectionPool.from_url(
        url,
        decode_responses=True,
        socket_timeout=None,
        socket_connect_timeout=1.0,
        socket_keepalive=True,
        health_check_interval=30,
        max_connections=max_connections or MAX_CONNECTIONS,
    )
    return redis.Redis(connection_pool=pool)
