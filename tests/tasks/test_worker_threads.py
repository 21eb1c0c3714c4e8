"""A worker's background threads never die quietly, and its Redis client never waits
forever: each thread that dies of an unexpected exception tells its owner (a worker then
exits: tests/e2e/test_worker_trust.py), and a command Redis does not answer times out."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from core.settings import Settings
from tasks import keys
from tasks.connections import KEEPALIVE_COUNT, KEEPALIVE_IDLE
from tasks.events import token_fields
from tasks.publisher import EventPublisher
from tasks.runtime import WorkerRuntime
from tasks.stopper import RunningJobs, Stopper


class Deaths:
    """Records the (thread name, exception) it is told of."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, BaseException]] = []
        self.event = threading.Event()

    def __call__(self, name: str, exc: BaseException) -> None:
        self.seen.append((name, exc))
        self.event.set()


def test_a_dying_stopper_tells_its_owner() -> None:
    running = RunningJobs()
    running.add("job_1", "b", "k")

    def find(ids: list[str]) -> list[str]:
        raise ValueError("a reply we cannot read")

    deaths = Deaths()
    stopper = Stopper(running, find, lambda job_id: None, interval=0.01, on_death=deaths)
    stopper.start()
    assert deaths.event.wait(2)
    assert deaths.seen[0][0] == "job-stopper" and isinstance(deaths.seen[0][1], ValueError)
    stopper.join(1)
    assert not stopper.is_alive()


def test_a_dying_publisher_tells_its_owner(stack) -> None:  # type: ignore[no-untyped-def]
    url = stack.redis_url.rsplit("/", 1)[0] + "/5"
    raw = redis.Redis.from_url(url)  # bytes: to write what no decoding client can read
    raw.hset(keys.job_key("job_x"), "cancel", b"\xff")
    deaths = Deaths()
    pub = EventPublisher(redis.Redis.from_url(url, decode_responses=True), on_death=deaths)
    pub.token("job_x", "1000-1", token_fields(0, "a"), 60)
    assert deaths.event.wait(5)
    name, exc = deaths.seen[0]
    assert name == "event-publisher" and isinstance(exc, UnicodeDecodeError)
    raw.delete(keys.job_key("job_x"), keys.events_key("job_x"))


class AnnouncesOnce:
    """A backend whose second announcement fails (the first is made at start)."""

    def __init__(self) -> None:
        self.calls = 0

    def announce(self) -> dict[str, Any]:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("the device went away")
        return {"models": ["m"]}


def test_a_dying_heartbeat_tells_its_owner(stack, r) -> None:  # type: ignore[no-untyped-def]
    url = stack.redis_url.rsplit("/", 1)[0] + "/5"
    deaths = Deaths()
    rt = WorkerRuntime(Settings(redis_url=url, heartbeat_interval=0.05), {}, on_death=deaths)
    rt._backends["local"] = AnnouncesOnce()  # type: ignore[assignment]
    rt.start_heartbeat(["q"], {}, lambda job: None)
    try:
        assert deaths.event.wait(3)
        name, exc = deaths.seen[0]
        assert name == "router-heartbeat" and isinstance(exc, RuntimeError)
    finally:
        rt.stop()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a Redis behind a dead
    network path, as a client sees it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join(1)
    for conn in accepted:
        conn.close()
    server.close()


def test_a_command_redis_never_answers_times_out(black_hole: str) -> None:
    env = {"REDIS_URL": black_hole, "ROUTER_REDIS_TIMEOUT": "0.5"}
    rt = WorkerRuntime(Settings.load(env), env)
    outcome: list[BaseException | None] = []

    def command() -> None:
        try:
            rt.redis.hget(keys.job_key("job_1"), "cancel")
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test reads it below
            outcome.append(exc)

    started = time.monotonic()
    caller = threading.Thread(target=command, daemon=True)
    caller.start()
    caller.join(timeout=5)
    assert not caller.is_alive(), "a worker's Redis command waited forever"
    assert isinstance(outcome[0], redis.TimeoutError)
    assert time.monotonic() - started < 3


@pytest.mark.skipif(not hasattr(socket, "TCP_KEEPIDLE"), reason="Linux keepalive options")
def test_worker_connections_probe_a_silent_peer_within_seconds(stack) -> None:  # type: ignore[no-untyped-def]
    rt = WorkerRuntime(Settings(redis_url=stack.redis_url), {})
    conn = rt.redis.connection_pool.get_connection()
    try:
        conn.connect()
        sock = conn._sock  # type: ignore[attr-defined]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        count = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
        assert (idle, count) == (KEEPALIVE_IDLE, KEEPALIVE_COUNT)
    finally:
        rt.redis.connection_pool.release(conn)
