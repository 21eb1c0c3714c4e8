"""`irouter flower`: Flower, with Celery task events on only while someone watches it.

Flower, as `celery flower` runs it, tells every worker to send task events
(`enable_events`, every 5 s) for as long as it runs, and then digests three events per
task: on a 2-core machine that halved what the stack could serve (docs/operations.md).
Here Flower runs in this process exactly as `celery -A tasks flower` runs it, with its own
timer off (`--enable_events=False`), and an `EventSwitch` hears of every request Flower
answers through tornado's `log_function` setting. While a request came within the last
`idle` seconds the switch broadcasts `enable_events` every 5 s (so workers started meanwhile
join); once none has, it broadcasts `disable_events` once. Flower's dashboard polls
`/workers?json=1` every second, so an open dashboard tab keeps task events on.

Relies on Flower 2.x: `flower.urls.settings` is the dict its tornado application is built
with, and `--enable_events` switches its own timer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from celery import Celery
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.log import access_log
from tornado.web import RequestHandler

log = logging.getLogger(__name__)

ENABLE_EVERY = 5.0  # seconds between enable_events broadcasts while watched, as Flower does
TICK = 1.0  # seconds between checks of whether anyone still watches
# Requests that are no person looking: Prometheus scrapes and liveness probes.
NOT_A_VIEWER = ("/metrics", "/healthcheck")


class EventSwitch:
    """Task events on in every worker while Flower is watched, off once it has not been for
    `idle` seconds. Lives on Flower's IOLoop; broadcasts run on a thread of their own."""

    def __init__(
        self, app: Celery, idle: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.app, self.idle, self.clock = app, idle, clock
        self.last_view: float | None = None
        self.on: bool | None = None  # what the workers were last told; None: not known
        self.last_enable = 0.0
        self.in_flight = False
        self.loop: IOLoop | None = None
        self.timer: PeriodicCallback | None = None

    def start(self) -> None:
        """On Flower's IOLoop: switch events off now (nobody watches yet), then keep checking."""
        self.loop = IOLoop.current()
        self.timer = PeriodicCallback(self.tick, TICK * 1000)
        self.timer.start()
        self.tick()

    def request_done(self, handler: RequestHandler) -> None:
        """tornado's `log_function`: note a page or API request, and log it as tornado would.

        Requests refused (401 without credentials, 404) and probes do not count."""
        _access_log(handler)
        if handler.get_status() >= 400 or handler.request.path.endswith(NOT_A_VIEWER):
            return
        self.last_view = self.clock()
        if self.on is not True and self.loop is not None:
            self.tick()  # the first look turns events on now, not at the next tick

    def watched(self) -> bool:
        """Whether Flower answered a viewer within the last `idle` seconds."""
        return self.last_view is not None and self.clock() - self.last_view < self.idle

    def tick(self) -> None:
        """Broadcast what the workers should do now; one broadcast at a time, in order."""
        if self.in_flight:
            return
        now = self.clock()
        if self.watched():
            if self.on is not True:
                log.info("Flower is being watched: task events on")
            elif now - self.last_enable < ENABLE_EVERY:
                return
            self.on, self.last_enable = True, now
            self._broadcast("enable_events")
        elif self.on is not False:
            if self.on is True:
                log.info("nobody has watched Flower for %gs: task events off", self.idle)
            else:
                log.info("task events off until someone watches Flower")
            self.on = False
            self._broadcast("disable_events")

    def stop(self, timeout: float = 3.0) -> None:
        """Flower is stopping: leave the workers without task events, nobody will watch.

        Waits at most `timeout` seconds, so an unreachable Redis cannot hold up the exit."""
        if self.timer is not None:
            self.timer.stop()
        if self.on is False and not self.in_flight:
            return
        sender = threading.Thread(
            target=self._send, args=("disable_events", None), name="flower-events", daemon=True
        )
        sender.start()
        sender.join(timeout)

    def _broadcast(self, command: str) -> None:
        # kombu retries a publish until Redis answers: never on the IOLoop, and on a daemon
        # thread (not an executor, whose threads are joined at exit) so it cannot hang one.
        self.in_flight = True
        threading.Thread(
            target=self._send, args=(command, self.loop), name="flower-events", daemon=True
        ).start()

    def _send(self, command: str, loop: IOLoop | None) -> None:
        error: Exception | None = None
        try:
            self.app.control.broadcast(command)
        except Exception as exc:  # noqa: BLE001 - the IOLoop logs it and sends again
            error = exc
        if loop is not None:
            loop.add_callback(self._sent, command, error)
        elif error is not None:
            log.warning("%s failed: %s", command, error)

    def _sent(self, command: str, error: Exception | None) -> None:
        self.in_flight = False
        if error is not None:
            log.warning("%s failed (%s); trying again", command, error)
            self.on = None


def _access_log(handler: RequestHandler) -> None:
    """What tornado's `Application.log_request` writes when no `log_function` is set (Flower
    silences `tornado.access` unless run with --debug)."""
    status = handler.get_status()
    if status < 400:
        write = access_log.info
    elif status < 500:
        write = access_log.warning
    else:
        write = access_log.error
    request = handler.request
    write(
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        request.uri,
        request.remote_ip,
        1000.0 * request.request_time(),
    )


def run_flower(address: str, port: int, idle: float) -> None:
    """Run `celery -A tasks flower` in this process, its task events switched by watching."""
    from celery.bin.celery import celery as celery_cli
    from flower.urls import settings as flower_settings

    from tasks.celery import app

    switch = EventSwitch(app, idle)
    flower_settings["log_function"] = switch.request_done
    IOLoop.current().add_callback(switch.start)  # once Flower starts its (this thread's) loop
    args = ["-A", "tasks", "flower", f"--address={address}", f"--port={port}"]
    args.append("--enable_events=False")
    try:
        celery_cli.main(args=args, prog_name="celery", standalone_mode=False)
    finally:
        switch.stop()
