"""Stopping a worker's running jobs from outside, whatever they are doing.

A job that streams tokens learns of a cancel from the publisher's pipeline, which reads
its flag back with every flush. A job that has produced nothing yet (waiting for a slot in
the local batch, prefilling a long prompt, waiting for an upstream's first byte) flushes
nothing, so the `Stopper` asks Redis every few hundred milliseconds which running jobs must
stop (cancelled, taken over by a later attempt, or synchronous ones whose API process died)
and interrupts them: through the backend's own `cancel(job_id)` where it has one (the local
batch engine frees the slot), else by raising `JobStopped` in the job's greenlet (gevent
pools), which closes the upstream request at once.

The same look, with no Redis, stops every running job past its deadline the same way,
whatever its backend is doing (a silent upstream, a stuck prefill): the job then ends
with a 504 rather than `cancelled` (tasks/execute.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from tasks.threads import ThreadDeath, run_guarded

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.25  # seconds between looks at which running jobs must stop


class JobStopped(Exception):
    """Raised inside a job's greenlet: its job was cancelled while the backend blocked."""


@dataclass
class _Running:
    backend: str
    kind: str
    greenlet: Any  # the job's greenlet under a gevent pool, else None
    deadline: float | None = None  # epoch seconds
    stopping: bool = False


def _current_greenlet() -> Any:
    try:
        from gevent import getcurrent, monkey
    except ImportError:
        return None
    return getcurrent() if monkey.is_module_patched("threading") else None


class RunningJobs:
    """The jobs this worker process is running now, and how to interrupt each."""

    def __init__(self) -> None:
        self._jobs: dict[str, _Running] = {}

    def add(self, job_id: str, backend: str, kind: str, deadline: float | None = None) -> None:
        """Called from the job's own thread or greenlet, before the backend is called."""
        self._jobs[job_id] = _Running(backend, kind, _current_greenlet(), deadline)

    def remove(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def ids(self) -> list[str]:
        """Running jobs not already being stopped."""
        return [j for j, run in list(self._jobs.items()) if not run.stopping]

    def expired(self, now: float) -> list[str]:
        """Running jobs past their deadline, not already being stopped."""
        jobs = list(self._jobs.items())
        return [j for j, run in jobs if run.deadline and run.deadline <= now and not run.stopping]

    def backends(self) -> list[str]:
        """The backend of each running job (for the heartbeat's load per backend)."""
        return [run.backend for run in list(self._jobs.values())]

    def stop(self, job_id: str, cancel: Callable[[str, str], bool]) -> None:
        """Interrupt `job_id` once: `cancel(kind, job_id)` (the backend's own way, True if
        it has one), else JobStopped in its greenlet. Threads without either stop at their
        next token, when the publisher reads the cancel flag."""
        run = self._jobs.get(job_id)
        if run is None or run.stopping:
            return
        run.stopping = True
        if not cancel(run.kind, job_id) and run.greenlet is not None:
            run.greenlet.kill(JobStopped, block=False)


class Stopper(threading.Thread):
    """Polls Redis for running jobs that must stop, and stops them (see the module doc)."""

    def __init__(
        self,
        running: RunningJobs,
        find: Callable[[list[str]], list[str]],
        stop: Callable[[str], None],
        interval: float = POLL_INTERVAL,
        on_death: ThreadDeath | None = None,
    ) -> None:
        super().__init__(name="job-stopper", daemon=True)
        self.running, self.find, self.stop_job, self.interval = running, find, stop, interval
        self.on_death = on_death  # None: the thread just dies (its exception is printed)
        self._stopped = threading.Event()

    def run(self) -> None:
        run_guarded(self.name, self._stop_until_stopped, self.on_death)

    def _stop_until_stopped(self) -> None:
        while not self._stopped.wait(self.interval):
            for job_id in self.running.expired(time.time()):
                log.info("job %s: past its deadline, stopping", job_id)
                self.stop_job(job_id)
            ids = self.running.ids()
            if not ids:
                continue
            try:
                found = self.find(ids)
            except redis.RedisError as exc:
                log.warning("job stopper: %s", exc)  # Redis away: look again next time
                continue
            for job_id in found:
                log.info("job %s: stopping (cancelled, superseded or its client is gone)", job_id)
                self.stop_job(job_id)

    def stop(self) -> None:
        self._stopped.set()
