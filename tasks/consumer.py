"""Consumer liveness: is this worker's Celery consumer still taking messages off its queues?

The heartbeat (tasks/runtime.py) runs in a thread of its own, beside Celery's consumer, so
on its own it would go on announcing a worker whose consumer had stopped asking the broker
for messages: jobs would wait on the queue while the API counted on the worker. The
heartbeat asks this watch on every beat (`vet`). The consumer is live when kombu sent a
BRPOP for its queues, or a message arrived, within `stall_after` seconds, or when every
prefetch slot is taken (then it is not meant to poll). Otherwise, and once Redis has
answered for half that time too (during an outage Celery's own reconnect is in charge):

1. the heartbeat stops announcing the worker's queues and says why in `consumer`, so the
   API no longer counts on it (its running jobs carry on, the worker stays alive);
2. the consumer's broker sockets are shut down: the read it is stuck in fails, and
   Celery's own reconnect starts it again, as after any lost connection;
3. if it still has not polled `stall_after` seconds later, the process exits with status
   70 for its supervisor to start it again (the reaper redelivers its running jobs).

A consumer that is reconnecting (Celery retrying the broker) is announced off its queues the
same way but not kicked: Celery retries every 2 to 30 s, so it gets `RECONNECT_GRACE`
seconds of Redis answering to succeed, then the process exits as in 3.
See docs/resilience.md, "Redis restarts".
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from tasks.runtime import EXIT_THREAD_DIED, WorkerRuntime, exit_now

log = logging.getLogger(__name__)

EXIT_STALLED = EXIT_THREAD_DIED  # EX_SOFTWARE: the supervisor starts the worker again
#: Seconds without a poll before a consumer counts as stalled: 5 heartbeats, at least 10 s
#: (an idle consumer polls every second; Celery's first reconnect attempt waits 2 s).
MIN_STALL_AFTER = 10.0
#: Seconds of Redis answering a reconnecting consumer gets on top of `stall_after`: the
#: longest wait between two of Celery's connection retries (kombu's `interval_max`).
RECONNECT_GRACE = 30.0


class ConsumerWatch:
    """Tells the heartbeat whether the consumer polls, and restarts one that does not."""

    def __init__(
        self,
        stall_after: float,
        ping: Callable[[], object],
        clock: Callable[[], float] = time.monotonic,
        exit_process: Callable[[int], object] = exit_now,
    ) -> None:
        """`ping` raises while Redis is unreachable (the heartbeat's client's `ping`)."""
        self.stall_after = stall_after
        self.stalls = 0  # consumer restarts this watch asked for
        self._ping, self._clock, self._exit = ping, clock, exit_process
        self._consumer: Any = None
        self._received = self._polled = 0.0
        self._reachable_since: float | None = None
        self._kicked_at: float | None = None

    @classmethod
    def for_heartbeat(cls, interval: float, ping: Callable[[], object]) -> ConsumerWatch:
        """The watch of a worker beating every `interval` seconds."""
        return cls(max(MIN_STALL_AFTER, 5 * interval), ping)

    def attach(self, consumer: Any) -> None:
        """Watch `consumer` (Celery's, once it is ready); it keeps the same object across
        reconnects, so this is called once."""
        self._received = self._clock()
        consumer.on_task_message.add(self._on_message)
        self._consumer = consumer

    def _on_message(self, _request: Any) -> None:
        self._received = self._clock()

    def idle(self) -> float:
        """Seconds since the consumer last polled its queues or got a message; 0 while it
        is not attached yet or has no free prefetch slot."""
        c = self._consumer
        if c is None:
            return 0.0
        now = self._clock()
        channel = getattr(getattr(c, "task_consumer", None), "channel", None)
        if c.connection is not None and channel is not None:  # else reconnecting
            if not hasattr(channel, "_brpop_sent_at"):
                return 0.0  # not kombu's Redis transport: nothing to tell polls by
            if _full(channel):
                self._polled = now
            else:
                self._polled = max(self._polled, getattr(channel, "_brpop_sent_at", None) or 0.0)
        return now - max(self._polled, self._received)

    def vet(self, queues: list[str]) -> tuple[list[str], dict[str, str]]:
        """The queues this beat may announce, and the `consumer` fact ("" when fine).
        Raises what `ping` raises while Redis is unreachable: that beat fails anyway."""
        idle = self.idle()
        if idle < self.stall_after / 2:
            if self._kicked_at is not None:
                log.warning("consumer polling its queues again")
            self._reachable_since = self._kicked_at = None
            return queues, {"consumer": ""}
        now = self._clock()
        try:
            self._ping()
        except Exception:  # Redis is away: Celery's reconnect is in charge; the beat fails
            self._reachable_since = None
            raise
        if self._reachable_since is None:
            self._reachable_since = now
        answering = now - self._reachable_since
        if idle < self.stall_after or answering < self.stall_after / 2:
            return queues, {"consumer": ""}
        if self._consumer.connection is None:
            reason = f"reconnecting to the broker for {idle:.0f} s"
            if answering >= self.stall_after + RECONNECT_GRACE:
                log.critical("consumer still %s while Redis answers; exiting", reason)
                self._exit(EXIT_STALLED)
            return [], {"consumer": reason}
        reason = f"stalled: no poll of its queues for {idle:.0f} s"
        if self._kicked_at is None:
            self._kicked_at = now
            self.stalls += 1
            log.error("consumer %s; dropping its broker connection to restart it", reason)
            self._kick()
        elif now - self._kicked_at >= self.stall_after:
            log.critical("consumer still %s after a restart; exiting", reason)
            self._exit(EXIT_STALLED)
        return [], {"consumer": reason}

    def _kick(self) -> None:
        """Shut down the consumer's broker sockets: its pending read fails with a lost
        connection, which Celery handles by reconnecting and consuming again."""
        for sock in broker_sockets(self._consumer.connection):
            with contextlib.suppress(OSError):  # already closed: nothing waits on it
                sock.shutdown(socket.SHUT_RDWR)


def watch_consumer(rt: WorkerRuntime) -> ConsumerWatch:
    """Tie `rt`'s heartbeat to this worker's consumer: from Celery's `worker_ready` on, a
    beat announces the worker's queues only while its consumer polls them."""
    from celery import signals

    watch = ConsumerWatch.for_heartbeat(rt.settings.heartbeat_interval, rt.redis.ping)
    rt.vet_queues = watch.vet
    signals.worker_ready.connect(lambda sender, **_: watch.attach(sender), weak=False)
    return watch


def _full(channel: Any) -> bool:
    """Every prefetch slot taken: kombu says so, and Celery holds that many requests
    (a slot kombu never got back would otherwise stop polling for good)."""
    from celery.worker.state import reserved_requests

    qos = channel.qos
    return not qos.can_consume() and len(reserved_requests) >= (qos.prefetch_count or 1)


def broker_sockets(connection: Any) -> Iterator[socket.socket]:
    """The open sockets of a kombu Redis connection (its channels' clients)."""
    if connection is None:
        return
    for channel in list(getattr(connection.transport, "channels", None) or ()):
        cached = getattr(channel, "__dict__", {})  # never the `client` property: it dials
        for name in ("client", "subclient"):
            sock = getattr(getattr(cached.get(name), "connection", None), "_sock", None)
            if sock is not None:
                yield sock
