"""TTLCache: freshness by a monotonic clock, disabling, and one build per key."""

from __future__ import annotations

import threading
import time

import pytest

from core.ttl import TTLCache


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_value_is_fresh_for_ttl_seconds_then_gone() -> None:
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(0.5, clock)
    assert cache.get("a") is None
    cache.put("a", 1)
    clock.now += 0.49
    assert cache.get("a") == 1
    clock.now += 0.01
    assert cache.get("a") is None
    assert cache._entries == {}  # an expired entry is dropped when looked up


def test_putting_again_restarts_the_ttl() -> None:
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(1.0, clock)
    cache.put("a", 1)
    clock.now += 0.8
    cache.put("a", 2)
    clock.now += 0.8
    assert cache.get("a") == 2


@pytest.mark.parametrize("ttl", [0, -1])
def test_a_ttl_of_zero_keeps_nothing(ttl: float) -> None:
    cache: TTLCache[str, int] = TTLCache(ttl, Clock())
    cache.put("a", 1)
    assert cache.get("a") is None and cache._entries == {}
    calls: list[int] = []

    def build() -> int:
        calls.append(1)
        return len(calls)

    assert [cache.get_or_build("a", build) for _ in range(3)] == [1, 2, 3]


def test_get_or_build_builds_only_when_stale() -> None:
    clock, built = Clock(), []
    cache: TTLCache[str, str] = TTLCache(1.0, clock)

    def build() -> str:
        built.append(clock.now)
        return f"v{len(built)}"

    assert cache.get_or_build("k", build) == "v1"
    assert cache.get_or_build("k", build) == "v1"
    clock.now += 1.0
    assert cache.get_or_build("k", build) == "v2"
    assert cache.get_or_build("other", build) == "v3"  # keys are independent
    assert built == [100.0, 101.0, 101.0]


def test_a_failed_build_keeps_nothing() -> None:
    cache: TTLCache[str, int] = TTLCache(1.0, Clock())

    def broken() -> int:
        raise RuntimeError("redis down")

    with pytest.raises(RuntimeError):
        cache.get_or_build("k", broken)
    assert cache.get("k") is None
    assert cache.get_or_build("k", lambda: 7) == 7  # the key is not left locked


def test_concurrent_callers_share_one_build() -> None:
    cache: TTLCache[str, int] = TTLCache(60.0)
    started, release, builds = threading.Event(), threading.Event(), []

    def slow() -> int:
        builds.append(1)
        started.set()
        release.wait(5)
        return 42

    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_build("k", slow)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    assert started.wait(5)
    time.sleep(0.05)  # let the others reach the gate
    release.set()
    for t in threads:
        t.join(5)
    assert results == [42] * 8 and builds == [1]


def test_a_slow_build_does_not_block_other_keys() -> None:
    cache: TTLCache[str, int] = TTLCache(60.0)
    started, release = threading.Event(), threading.Event()

    def slow() -> int:
        started.set()
        release.wait(5)
        return 1

    t = threading.Thread(target=lambda: cache.get_or_build("slow", slow))
    t.start()
    assert started.wait(5)
    try:
        assert cache.get_or_build("fast", lambda: 2) == 2
        assert cache.get("slow") is None  # still building
    finally:
        release.set()
        t.join(5)
    assert cache.get("slow") == 1
