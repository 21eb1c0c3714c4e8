"""The Flower event switch on its own: a fake clock and a recording control stand in for
time and the workers (tests/e2e/test_flower.py drives the real Flower and workers)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from tornado.ioloop import IOLoop

from tasks.flower import ENABLE_EVERY, EventSwitch


class Control:
    """Records broadcasts; fails the next `failures` of them."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.attempts: list[str] = []
        self.failures = 0

    def broadcast(self, command: str) -> None:
        self.attempts.append(command)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Redis went away")
        self.sent.append(command)


def request(path: str = "/", status: int = 200) -> Any:
    """What tornado hands `log_function`: a finished handler."""
    req = SimpleNamespace(path=path, method="GET", uri=path, remote_ip="127.0.0.1")
    req.request_time = lambda: 0.001
    return SimpleNamespace(get_status=lambda: status, request=req)


def run(scenario: Callable[[EventSwitch, Control, list[float]], Any]) -> None:
    """Run `scenario(switch, control, clock)` on a tornado IOLoop, as Flower would."""
    control, clock = Control(), [1000.0]
    switch = EventSwitch(SimpleNamespace(control=control), idle=10, clock=lambda: clock[0])  # type: ignore[arg-type]

    async def main() -> None:
        switch.start()
        await settle()
        await scenario(switch, control, clock)
        switch.timer.stop()  # type: ignore[union-attr]

    IOLoop().run_sync(main, timeout=10)


async def settle() -> None:
    """Let broadcast threads finish and their callbacks run on the loop."""
    for _ in range(50):
        await asyncio.sleep(0.01)


def test_events_are_on_only_while_someone_looks() -> None:
    async def scenario(switch: EventSwitch, control: Control, clock: list[float]) -> None:
        assert control.sent == ["disable_events"]  # nobody watches at start
        switch.request_done(request("/"))
        await settle()
        assert control.sent[-1] == "enable_events" and switch.on is True
        clock[0] += 1
        switch.tick()
        await settle()
        assert control.sent.count("enable_events") == 1  # not again within ENABLE_EVERY
        clock[0] += ENABLE_EVERY
        switch.request_done(request("/workers"))  # an open dashboard polls
        switch.tick()
        await settle()
        assert control.sent.count("enable_events") == 2  # workers started meanwhile join
        clock[0] += 10  # idle seconds without a look
        switch.tick()
        await settle()
        assert control.sent[-1] == "disable_events" and switch.on is False
        switch.tick()
        await settle()
        assert control.sent.count("disable_events") == 2  # once at start, once now

    run(scenario)


def test_probes_and_refused_requests_are_nobody_watching() -> None:
    async def scenario(switch: EventSwitch, control: Control, clock: list[float]) -> None:
        for handler in (request("/metrics"), request("/healthcheck"), request("/", 401)):
            switch.request_done(handler)
        switch.tick()
        await settle()
        assert control.sent == ["disable_events"] and not switch.watched()

    run(scenario)


def test_a_failed_broadcast_is_sent_again() -> None:
    async def scenario(switch: EventSwitch, control: Control, clock: list[float]) -> None:
        control.failures = 1
        switch.request_done(request("/"))
        await settle()
        switch.tick()  # the periodic check may have sent it again already
        await settle()
        assert control.attempts.count("enable_events") == 2
        assert control.sent[-1] == "enable_events" and switch.on is True

    run(scenario)
