"""Redis clients for the router's own keys, built once per process and reused.

A command that Redis never answers (a host gone without a reset, a NAT that dropped the
flow, a stalled server) must not hang its caller: a worker's client gives every command
`socket_timeout` seconds (ROUTER_REDIS_TIMEOUT), after which it raises redis.TimeoutError,
which every worker loop already treats as "Redis unavailable, retry". Blocking stream
readers cannot have one: `XREAD BLOCK` waits as long as it was told, so the API's client
keeps `socket_timeout=None` (redis-py 8's own default of 5 s would kill every longer read,
docs/benchmarks.md). Every client tunes TCP keepalive, so that even a connection blocked
in a read learns of a dead peer in about half a minute rather than the kernel's two hours.

Blocking readers also hold a connection each while they wait, so a pool must be as large
as the requests one process can have waiting: redis-py 8 quietly caps a pool at 100
connections, which made an API worker answer 503 to its 101st concurrent request
(bench/overhead.py, open loop).
"""

from __future__ import annotations

import socket

import redis

#: Above gunicorn's 2000 connections per API worker (each waiting request blocks one) and
#: a gevent worker's 1000 jobs; well under Redis's default `maxclients` of 10000.
MAX_CONNECTIONS = 4096

#: TCP keepalive: first probe after this many idle seconds, then one every INTERVAL, and
#: the connection is dropped after COUNT unanswered: a dead peer is found in about 25 s.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3


def keepalive_options() -> dict[int, int]:
    """The keepalive socket options this platform has (macOS names the idle time
    TCP_KEEPALIVE; Linux TCP_KEEPIDLE)."""
    idle = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)
    wanted = {
        idle: KEEPALIVE_IDLE,
        getattr(socket, "TCP_KEEPINTVL", None): KEEPALIVE_INTERVAL,
        getattr(socket, "TCP_KEEPCNT", None): KEEPALIVE_COUNT,
    }
    return {option: value for option, value in wanted.items() if option is not None}


def redis_client(
    url: str, *, max_connections: int | None = None, socket_timeout: float | None = None
) -> redis.Redis:
    """A client with its own pool: decoded strings, fast connect timeout, tuned keepalive.
    `socket_timeout`: seconds a command may wait for its answer; None (no limit) only for a
    client that issues blocking reads."""
    pool = redis.ConnectionPool.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=1.0,
        socket_keepalive=True,
        socket_keepalive_options=keepalive_options(),
        health_check_interval=30,
        max_connections=max_connections or MAX_CONNECTIONS,
    )
    return redis.Redis(connection_pool=pool)
