"""The one cache of upstream clients every provider backend keeps: one client per set of
facts that makes a client, shared by all of a worker's threads and greenlets.

    class MyBackend(ClientBackend[SDKClient]):    # env, from_env, client(), close()
        def new_client(self, ep, headers): ...    # made once per key, then reused
    backend.client(ep)                            # or (ep, headers): not the endpoint's own

A client holds a connection pool, so making one per request would throw away every
keep-alive connection; one per key keeps them. The key is everything a client is built
from: base URL, key, static headers and both timeouts (`client_key`). Keys come from the
worker's own configuration, so there are few; the cache is bounded all the same, so that
a long-lived worker cannot grow it without end: past `limit`, the least recently used
client is dropped (and closed, when the backend says closing it is safe).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Generic, Self, TypeVar

from core.settings import Settings
from workers.providers import Endpoint
from workers.upstream import RetryPolicy

C = TypeVar("C")

#: What one client is made from: base URL, key, static headers, read and connect timeouts.
ClientKey = tuple[str | None, str | None, tuple[tuple[str, str], ...], float, float]

#: Clients kept per backend; a worker's endpoints are far fewer.
MAX_CLIENTS = 64


def client_key(ep: Endpoint, headers: Mapping[str, str]) -> ClientKey:
    """Everything that makes one client differ from another, hashable."""
    return (ep.base_url, ep.key, tuple(sorted(headers.items())), ep.timeout, ep.connect_timeout)


class ClientCache(Generic[C]):
    """Clients by `client_key`, made by `build(ep, headers)` under a lock, so that two
    threads (or greenlets: the lock is gevent's once the worker is monkey-patched) asking
    for a new endpoint at once get the same client.

    `close` is called on a client dropped by the bound and on every client at `close()`;
    leave it None where closing a client would cut a stream still reading through it (the
    SDKs' httpx clients): such a client is just dropped, and closes when it is collected,
    once its last stream has ended."""

    def __init__(
        self,
        build: Callable[[Endpoint, Mapping[str, str]], C],
        *,
        close: Callable[[C], None] | None = None,
        limit: int = MAX_CLIENTS,
    ) -> None:
        self._build, self._close, self._limit = build, close, limit
        self._clients: OrderedDict[ClientKey, C] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ep: Endpoint, headers: Mapping[str, str] | None = None) -> C:
        """The client for `ep` with `headers` (default: the endpoint's own), made once."""
        headers = ep.headers if headers is None else headers
        key = client_key(ep, headers)
        with self._lock:
            client = self._clients.get(key)
            if client is not None:
                self._clients.move_to_end(key)
                return client
            client = self._clients[key] = self._build(ep, headers)
            dropped: C | None = None
            if len(self._clients) > self._limit:
                dropped = self._clients.popitem(last=False)[1]
        if dropped is not None and self._close is not None:
            self._close(dropped)
        return client

    def __len__(self) -> int:
        return len(self._clients)

    def close(self) -> None:
        """Forget every client, closing each when `close` was given."""
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        if self._close is not None:
            for client in clients:
                self._close(client)


class ClientBackend(Generic[C]):
    """What every provider backend is built on: its worker's environment, and the clients
    it reaches its upstreams with, cached by `client_key`. A subclass says how a client is
    made (`new_client`) and whether one may be closed when the cache drops it
    (`close_client`)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.policy = RetryPolicy.from_settings(Settings.load(self.env))  # ROUTER_UPSTREAM_*
        self._clients: ClientCache[C] = ClientCache(self.new_client, close=self.close_client)

    @classmethod
    def from_env(cls, env: Mapping[str, str], concurrency: int | None = None) -> Self:
        """The backend for a worker whose environment is `env` (keys, base URLs, retries);
        its concurrency does not size anything here."""
        return cls(env)

    def client(self, ep: Endpoint, headers: Mapping[str, str] | None = None) -> C:
        """The cached client for `ep` with these static headers (default: the endpoint's
        own). It never retries: `workers.upstream.retrying` decides, for every backend."""
        return self._clients.get(ep, headers)

    def new_client(self, ep: Endpoint, headers: Mapping[str, str]) -> C:
        """A client for `ep` sending `headers` with every request."""
        raise NotImplementedError

    def close_client(self, client: C) -> None:
        """Nothing, by default: closing an SDK's httpx client would cut the streams still
        reading through it, so a dropped one is left to close when it is collected, once
        its last stream has ended."""

    def close(self) -> None:
        """Forget every cached client (closing each, where `close_client` does)."""
        self._clients.close()
