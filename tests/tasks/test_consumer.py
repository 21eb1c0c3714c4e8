"""Consumer liveness: a consumer that stops polling is announced off its queues, restarted
by dropping its broker connection, and the process ends if that does not help."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace
from typing import Any

import pytest

from tasks.consumer import EXIT_STALLED, RECONNECT_GRACE, ConsumerWatch, broker_sockets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Qos:
    def __init__(self, free: bool = True, prefetch: int = 4) -> None:
        self.free, self.prefetch_count = free, prefetch

    def can_consume(self) -> bool:
        return self.free


class FakeConsumer(SimpleNamespace):
    __hash__ = object.__hash__  # a signal's sender is hashed


def fake_consumer(clock: Clock) -> tuple[Any, Any, socket.socket]:
    """A Celery consumer as the watch sees it: its channel's last BRPOP, its QoS, and the
    socket of the channel's Redis client; and the other end of that socket."""
    ours, theirs = socket.socketpair()
    channel = SimpleNamespace(qos=Qos(), _brpop_sent_at=clock.now)
    channel.client = SimpleNamespace(connection=SimpleNamespace(_sock=ours))
    connection = SimpleNamespace(transport=SimpleNamespace(channels=[channel]))
    consumer = FakeConsumer(
        on_task_message=set(), connection=connection, task_consumer=SimpleNamespace(channel=channel)
    )
    return consumer, channel, theirs


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def exits() -> list[int]:
    return []


@pytest.fixture
def watch(clock: Clock, exits: list[int]) -> ConsumerWatch:
    return ConsumerWatch(10.0, ping=lambda: True, clock=clock, exit_process=exits.append)


def test_a_polling_consumer_keeps_its_queues(watch: ConsumerWatch, clock: Clock) -> None:
    assert watch.vet(["q"]) == (["q"], {"consumer": ""})  # not attached yet: starting up
    consumer, channel, _ = fake_consumer(clock)
    watch.attach(consumer)
    for _ in range(30):  # a minute of polls every 2 s (an idle consumer: every second)
        clock.now += 2
        channel._brpop_sent_at = clock.now - 1
        assert watch.vet(["q"]) == (["q"], {"consumer": ""})
    clock.now += 60  # no poll, but a message arrived just now
    for callback in consumer.on_task_message:
        callback(object())
    assert watch.vet(["q"]) == (["q"], {"consumer": ""})
    assert watch.stalls == 0


def test_a_stalled_consumer_is_announced_kicked_then_ended(
    watch: ConsumerWatch, clock: Clock, exits: list[int]
) -> None:
    consumer, _, theirs = fake_consumer(clock)
    watch.attach(consumer)
    clock.now += 6  # past half the limit: Redis is asked whether it answers
    assert watch.vet(["q"]) == (["q"], {"consumer": ""})
    clock.now += 5  # no poll for the limit, and Redis answering for half of it
    assert watch.vet(["q"]) == ([], {"consumer": "stalled: no poll of its queues for 11 s"})
    assert watch.stalls == 1
    theirs.settimeout(1)
    assert theirs.recv(1) == b""  # its broker socket was shut down: the blocked read ends
    clock.now += 9
    assert watch.vet(["q"])[0] == [] and exits == []
    clock.now += 1  # still no poll `stall_after` after the kick
    watch.vet(["q"])
    assert exits == [EXIT_STALLED]


def test_a_kicked_consumer_that_polls_again_serves_again(
    watch: ConsumerWatch, clock: Clock, exits: list[int]
) -> None:
    consumer, channel, _ = fake_consumer(clock)
    watch.attach(consumer)
    for _ in range(6):
        clock.now += 2
        watch.vet(["q"])
    assert watch.stalls == 1
    channel._brpop_sent_at = clock.now  # Celery reconnected and polls
    clock.now += 1
    assert watch.vet(["q"]) == (["q"], {"consumer": ""})
    clock.now += 30
    channel._brpop_sent_at = clock.now
    watch.vet(["q"])
    assert exits == [] and watch.stalls == 1


def test_no_stall_is_counted_while_redis_is_away(clock: Clock, exits: list[int]) -> None:
    up = {"redis": False}

    def ping() -> bool:
        if not up["redis"]:
            raise ConnectionError("Redis is restarting")
        return True

    watch = ConsumerWatch(10.0, ping=ping, clock=clock, exit_process=exits.append)
    consumer, channel, _ = fake_consumer(clock)
    watch.attach(consumer)
    consumer.connection = None  # Celery lost the broker and is reconnecting
    clock.now += 6
    for _ in range(30):
        clock.now += 2
        with pytest.raises(ConnectionError):
            watch.vet(["q"])  # the beat fails as it would have anyway
    up["redis"] = True
    clock.now += 2
    assert watch.vet(["q"]) == (["q"], {"consumer": ""})  # Celery gets time to reconnect
    clock.now += 6
    assert watch.vet(["q"]) == ([], {"consumer": "reconnecting to the broker for 74 s"})
    assert watch.stalls == 0 and exits == []  # Celery's own retries are in charge
    consumer.connection = SimpleNamespace(transport=SimpleNamespace(channels=[channel]))
    channel._brpop_sent_at = clock.now
    assert watch.vet(["q"]) == (["q"], {"consumer": ""})


def test_a_consumer_that_never_reconnects_ends_the_process(clock: Clock, exits: list[int]) -> None:
    watch = ConsumerWatch(10.0, ping=lambda: True, clock=clock, exit_process=exits.append)
    consumer, _, _ = fake_consumer(clock)
    watch.attach(consumer)
    consumer.connection = None  # Celery lost the broker; Redis answers, yet it never connects
    asked = 1000 + 6  # the first beat past half the limit asks Redis, which answers
    while clock.now + 2 < asked + 10 + RECONNECT_GRACE:
        clock.now += 2
        queues, facts = watch.vet(["q"])
        assert exits == [] and watch.stalls == 0  # Celery's retries get their time, no kick
    assert queues == [] and facts["consumer"].startswith("reconnecting")
    clock.now += 2  # Redis has answered for the limit and the grace: no reconnect coming
    watch.vet(["q"])
    assert exits == [EXIT_STALLED]


def test_a_consumer_with_every_slot_taken_is_not_stalled(
    watch: ConsumerWatch, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery.worker import state

    consumer, channel, _ = fake_consumer(clock)
    watch.attach(consumer)
    channel.qos.free = False  # kombu holds 4 unacked messages...
    monkeypatch.setattr(state, "reserved_requests", {1, 2, 3, 4})  # ...and Celery runs them
    for _ in range(30):
        clock.now += 2
        assert watch.vet(["q"]) == (["q"], {"consumer": ""})
    monkeypatch.setattr(state, "reserved_requests", {1})  # slots kombu never got back
    for _ in range(6):
        clock.now += 2
        queues, _ = watch.vet(["q"])
    assert queues == [] and watch.stalls == 1


def test_kombu_records_each_brpop_the_watch_reads(stack) -> None:  # type: ignore[no-untyped-def]
    """The watch reads kombu's time of the last BRPOP sent (`_brpop_sent_at`): pin it."""
    from kombu import Connection, Queue

    with Connection(stack.redis_url.rsplit("/", 1)[0] + "/5") as conn:
        channel = conn.default_channel
        consumer = conn.Consumer(Queue("consumer-watch-probe"), callbacks=[lambda *_: None])
        consumer.consume()
        before = time.monotonic()
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=0.3)
        assert channel._brpop_sent_at is not None and channel._brpop_sent_at >= before


def test_a_kick_fails_the_read_a_real_consumer_waits_in(stack) -> None:  # type: ignore[no-untyped-def]
    """What the kick does to kombu: the BRPOP it waits on fails as a lost connection, the
    error Celery answers by reconnecting (and consuming again)."""
    from kombu import Connection, Queue

    with Connection(stack.redis_url.rsplit("/", 1)[0] + "/5") as conn:
        consumer = conn.Consumer(Queue("consumer-watch-kick"), callbacks=[lambda *_: None])
        consumer.consume()
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=0.3)  # a BRPOP is out, its socket registered
        socks = list(broker_sockets(conn))
        assert socks
        for sock in socks:
            sock.shutdown(socket.SHUT_RDWR)
        with pytest.raises(conn.connection_errors):
            conn.drain_events(timeout=5)


def test_the_heartbeat_announces_only_what_the_watch_lets_it(stack, r) -> None:  # type: ignore[no-untyped-def]
    """The hook in tasks/runtime.py, wired by `watch_consumer` and Celery's `worker_ready`:
    a stalled consumer's worker stays alive but is counted on none of its queues."""
    from celery import signals

    from core.settings import Settings
    from tasks import keys
    from tasks.consumer import watch_consumer
    from tasks.runtime import Heartbeat, WorkerRuntime

    url = stack.redis_url.rsplit("/", 1)[0] + "/5"
    rt = WorkerRuntime(Settings(redis_url=url), {})
    watch = watch_consumer(rt)
    consumer, channel, _ = fake_consumer(Clock())
    signals.worker_ready.send(sender=consumer)
    assert watch._consumer is consumer
    heartbeat = Heartbeat(rt, ["q"], {}, lambda job: None)
    channel._brpop_sent_at = time.monotonic()
    heartbeat.beat()
    assert rt.liveness.live_counts(["q"]) == {"q": 1}
    assert r.hget(keys.worker_key(rt.worker_id), "consumer") == ""
    rt.vet_queues = lambda queues: ([], {"consumer": "stalled: no poll of its queues for 12 s"})
    r.delete(keys.queue_workers_key("q"))  # as when the last announcement expires
    heartbeat.beat()
    assert rt.liveness.live_counts(["q"]) == {"q": 0}
    assert r.hget(keys.worker_key(rt.worker_id), "consumer").startswith("stalled")
    assert r.zscore(keys.WORKERS, rt.worker_id)  # still alive: its running jobs carry on
