"""A small key -> value cache whose entries are trusted for a fixed number of seconds.

The API reads several things from Redis and the registry that change rarely but are asked
for on every request (a registry snapshot, live workers, queue backlogs, closed circuits).
Each is worth keeping for a fraction of a second, and each needs the same three things:
a monotonic clock (a wall-clock step must not keep an entry forever or drop them all), a
lock (API processes serve many requests at once), and one build at a time per key (an
expired entry asked for by a hundred requests is read once, not a hundred times).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """Values per key, fresh for `ttl` seconds after they were put; thread-safe.

    `ttl` <= 0 disables the cache: nothing is kept and every lookup misses. `clock` is
    any monotonic seconds counter (tests pass a fake one). Expired entries are dropped
    when next looked up, so the cache holds at most the keys its callers use.
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._entries: dict[K, tuple[float, V]] = {}  # key -> (expires at, value)
        self._gates: dict[K, threading.Lock] = {}  # key -> held while its value is built
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The fresh value of `key`, else None."""
        with self._lock:
            entry = self._fresh(key)
        return None if entry is None else entry[1]

    def put(self, key: K, value: V) -> None:
        """Keep `value` for `key` for the next `ttl` seconds."""
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[key] = (self.clock() + self.ttl, value)

    def get_or_build(self, key: K, build: Callable[[], V]) -> V:
        """The fresh value of `key`, else `build()`'s, which is then kept. Callers asking
        for the same key while it is built wait for that build rather than repeat it (so
        `build` must not ask for its own key); an exception from `build` reaches its
        caller and keeps nothing."""
        with self._lock:
            entry = self._fresh(key)
            if entry is not None:
                return entry[1]
            gate = self._gates.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                entry = self._fresh(key)
            if entry is not None:
                return entry[1]
            value = build()
            self.put(key, value)
            return value

    def _fresh(self, key: K) -> tuple[float, V] | None:
        """The entry of `key` if fresh, else None (dropping an expired one). Called with
        the lock held."""
        entry = self._entries.get(key)
        if entry is not None and self.clock() >= entry[0]:
            del self._entries[key]
            return None
        return entry
