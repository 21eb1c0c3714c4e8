"""`irouter flower`, for real: workers send task events only while someone watches Flower.

Whether a worker sends task events is observed the only way that cannot mislead: a probe
task is sent to the worker's own queue while a receiver listens on Celery's event channel,
and the events naming that task are counted once the worker has run it. The same probe
first sees events that the test turned on itself, so "none" means off, not deaf.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from celery import Celery

from tests.conftest import BIN, Stack, Worker, free_port, wait_until

IDLE = 3  # FLOWER_EVENTS_IDLE for the Flower under test
AUTH = ("watcher", "secret")  # FLOWER_BASIC_AUTH, which Flower still reads
ALL_TASK_EVENTS = {"task-received", "task-started", "task-succeeded"}


class EventChannel:
    """Every Celery event on the session's Redis, heard by a receiver on its own thread."""

    def __init__(self, redis_url: str) -> None:
        self.capp = Celery("flower-test", broker=redis_url)
        self.by_task: dict[str, set[str]] = defaultdict(set)
        self.heartbeats: set[str] = set()
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        with self.capp.connection_for_read() as conn:
            self.receiver = self.capp.events.Receiver(conn, handlers={"*": self._heard})
            self.receiver.capture(limit=None, timeout=None, wakeup=True)

    def _heard(self, event: dict[str, Any]) -> None:
        if event["type"].startswith("task-"):
            self.by_task[event["uuid"]].add(event["type"])
        elif event["type"] == "worker-heartbeat":
            self.heartbeats.add(event["hostname"])

    def listen_for(self, worker: Worker) -> None:
        """Start listening (once), and return when `worker`'s heartbeats come through."""
        if not self.thread.is_alive():
            self.thread.start()
        hostname = f"{worker.name}@{socket.gethostname()}"
        wait_until(lambda: hostname in self.heartbeats, 20, f"event heartbeats of {hostname}")

    def probe(self, worker: Worker, queue: str) -> set[str]:
        """Run one task on `worker` (its queue is `queue`); the task events it sent for it."""
        job_id = f"job_flowerprobe{uuid.uuid4().hex[:12]}"
        task_id = str(uuid.uuid4())
        self.capp.send_task(
            f"router.generate.{queue}", args=[job_id, 1], queue=queue, task_id=task_id
        )
        # the worker logs the unknown job when the task is done with it
        wait_until(lambda: job_id in worker.log.read_text(), 20, f"{worker.name} to run a probe")
        give_up = time.monotonic() + 2  # events go out around that line: let them arrive
        while time.monotonic() < give_up and not self.by_task[task_id] >= ALL_TASK_EVENTS:
            time.sleep(0.05)
        return set(self.by_task[task_id])

    def sends_events(self, worker: Worker, queue: str) -> bool:
        return self.probe(worker, queue) >= ALL_TASK_EVENTS

    def sends_none(self, worker: Worker, queue: str) -> bool:
        return not self.probe(worker, queue)

    def close(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(timeout=5)


@pytest.fixture
def channel(stack: Stack) -> Iterator[EventChannel]:
    ch = EventChannel(stack.redis_url)
    yield ch
    ch.close()


def _listening(port: int) -> bool:
    """A bare TCP connect: Flower answers no request, so this is no view of it."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Dashboard:
    """What an open dashboard tab does: ask for the workers table every second."""

    def __init__(self, url: str) -> None:
        self.url, self.stopped = url, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with httpx.Client(timeout=5, auth=AUTH) as client:
            while True:
                client.get(self.url + "/workers?json=1").raise_for_status()
                if self.stopped.wait(1):
                    return

    def __enter__(self) -> Dashboard:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)


def test_task_events_only_while_someone_watches_flower(stack, start_worker, channel) -> None:
    venice = start_worker("venice", concurrency=4)
    channel.listen_for(venice)
    # a previous Flower left task events on: the probe sees them
    channel.capp.control.enable_events()
    wait_until(lambda: channel.sends_events(venice, "venice"), 30, "task events on")

    port = free_port()
    flower = stack.spawn(
        "flower",
        [str(BIN / "irouter"), "flower", "--port", str(port)],
        FLOWER_EVENTS_IDLE=str(IDLE),
        FLOWER_BASIC_AUTH=":".join(AUTH),
    )
    log = stack.tmp / "flower.log"
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _listening(port), 60, "Flower to listen", log)
        # nobody watches: Flower's start turns them off, and they stay off past Flower's own
        # 5 s enable timer; scrapes of /metrics, liveness probes and requests refused for
        # want of credentials are nobody watching
        wait_until(lambda: channel.sends_none(venice, "venice"), 30, "task events off", log)
        for _ in range(7):
            assert httpx.get(url + "/", timeout=5).status_code == 401
            assert httpx.get(url + "/healthcheck", timeout=5).status_code == 200
            assert httpx.get(url + "/metrics", timeout=5).status_code == 200
            time.sleep(1)
        assert channel.sends_none(venice, "venice")

        # a look at the dashboard turns them on
        assert httpx.get(url + "/", auth=AUTH, timeout=10).status_code == 200
        wait_until(lambda: channel.sends_events(venice, "venice"), 15, "task events on", log)

        # an open dashboard keeps them on, longer than IDLE, and a worker that starts
        # meanwhile (without events) is told within Flower's 5 s
        with Dashboard(url):
            grok = start_worker("grok", concurrency=4)
            channel.listen_for(grok)
            wait_until(lambda: channel.sends_events(grok, "grok"), 20, "late worker's events")
            assert channel.sends_events(venice, "venice")

        # nobody has looked for IDLE seconds: off again, everywhere
        wait_until(lambda: channel.sends_none(venice, "venice"), 30, "task events off", log)
        assert channel.sends_none(grok, "grok")
        assert "task events off" in log.read_text()
        grok.stop()
    finally:
        flower.terminate()
        flower.wait(timeout=20)
        venice.stop()
    assert flower.returncode == 0, log.read_text()[-4000:]
