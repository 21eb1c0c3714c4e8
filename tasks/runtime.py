"""What a worker process holds for its whole life: Redis clients, the job store, the event
publisher, the heartbeat and the backends (a local model is loaded once, here).

Built on first use or when the worker starts, never at import. Its three background
threads (event publisher, heartbeat, job stopper) are the worker: if one dies of an
unexpected exception, `exit_on_thread_death` ends the process, non-zero, with the reason
logged, so that its supervisor starts a fresh one. Carrying on would leave a worker that
claims jobs it can never finish (no publisher), is reaped while it works (no heartbeat) or
never stops a cancelled job (no stopper).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import NoReturn

import orjson
import redis

from core.settings import Settings
from tasks.connections import redis_client
from tasks.health import BackendHealth, BreakerPolicy
from tasks.jobs import JobStore
from tasks.liveness import Liveness, Requeued
from tasks.publisher import EventPublisher
from tasks.stopper import RunningJobs, Stopper
from tasks.threads import ThreadDeath, run_guarded
from workers.base import Backend, create_backend
from workers.providers import queue_kind

log = logging.getLogger(__name__)

MAX_REASON = 500  # characters of a start-up failure announced in the heartbeat
EXIT_THREAD_DIED = 70  # EX_SOFTWARE: the exit status of a worker whose thread died


def exit_now(status: int) -> NoReturn:
    """End the process at once, its log flushed: no clean shutdown (a stuck part may never
    finish one); another worker's reaper redelivers this one's running jobs, as after a
    crash."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(status)


def exit_on_thread_death(name: str, exc: BaseException) -> None:
    """Log why the worker thread `name` died, then end the process (exit_now)."""
    log.critical(
        "worker thread %s died (%s: %s): exiting with status %d to be restarted",
        name,
        type(exc).__name__,
        exc,
        EXIT_THREAD_DIED,
        exc_info=exc,
    )
    exit_now(EXIT_THREAD_DIED)


class WorkerRuntime:
    """Per-process state of a worker; one instance, shared by every task thread."""

    def __init__(
        self, settings: Settings, env: Mapping[str, str], on_death: ThreadDeath | None = None
    ) -> None:
        self.settings = settings
        self.env = env
        self.on_death = on_death or exit_on_thread_death
        # no blocking command is sent on it: every command may time out (tasks.connections)
        self.redis = redis_client(settings.redis_url, socket_timeout=settings.redis_timeout)
        self.jobs = JobStore(self.redis, job_ttl=settings.job_ttl, ahead=settings.dispatch_ahead)
        self.publisher = EventPublisher(self.redis, on_death=self.on_death)
        self.liveness = Liveness(self.redis)
        self.health = BackendHealth(self.redis, BreakerPolicy.from_settings(settings))
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.running = RunningJobs()
        # jobs the worker runs at once, once it has started (`prepare`): the local backend
        # sizes its batch by it
        self.concurrency: int | None = None
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()
        self._heartbeat: Heartbeat | None = None
        self._stopper: Stopper | None = None
        # queue -> backend kind of each queue this worker consumes, set by `prepare`: the
        # only jobs it runs (tasks/execute.py); None when driven in-process without it
        self.served: dict[str, str] | None = None
        # Consumer liveness hook (tasks/consumer.py), set by the worker at start: given the
        # queues, the ones a beat may announce and facts to add (a stalled consumer serves none).
        self.vet_queues: Callable[[list[str]], tuple[list[str], dict[str, str]]] | None = None

    def backend(self, kind: str) -> Backend:
        """The backend for `kind`, created once per process."""
        with self._lock:
            if kind not in self._backends:
                self._backends[kind] = create_backend(kind, self.env, self.concurrency)
            return self._backends[kind]

    def prepare(self, queues: list[str], concurrency: int | None = None) -> dict[str, str]:
        """Build the backend behind each of `queues` now (a local model is loaded here), so
        that a broken install or configuration shows at start, not on the first request;
        `concurrency` is the jobs the worker runs at once. Returns {queue: reason} for the
        queues whose backend could not be built; the worker serves the others and announces
        these as failed."""
        self.concurrency = concurrency
        self.served = {queue: queue_kind(queue, self.env) for queue in queues}
        by_kind: dict[str, list[str]] = {}
        for queue, kind in self.served.items():
            by_kind.setdefault(kind, []).append(queue)
        failed: dict[str, str] = {}
        for kind, served in sorted(by_kind.items()):
            started = time.monotonic()
            try:
                self.backend(kind)
            except Exception as exc:  # announced below; the other queues still serve
                reason = f"{type(exc).__name__}: {exc}"[:MAX_REASON]
                log.exception("backend %s (queues %s) failed at start", kind, ",".join(served))
                failed.update(dict.fromkeys(served, reason))
            else:
                log.info("backend %s ready in %.1fs", kind, time.monotonic() - started)
        return failed

    def announcement(self) -> tuple[list[str], dict[str, str]]:
        """The models this worker has loaded, and what it says of itself on each beat:
        device, precision, batch capacity and load from backends that announce them."""
        models: list[str] = []
        running = self.running.backends()
        per_backend = {b: running.count(b) for b in set(running)}
        info = {"active": str(len(running)), "active_backends": orjson.dumps(per_backend).decode()}
        for backend in list(self._backends.values()):
            announce = getattr(backend, "announce", None)
            if announce is None:
                continue
            facts = dict(announce())
            models += facts.pop("models", [])
            info.update({k: str(v) for k, v in facts.items()})
        return sorted(set(models)), info

    def start_heartbeat(
        self, queues: list[str], info: dict[str, str], requeue: Callable[[Requeued], None]
    ) -> None:
        """Announce this worker on `queues` and keep announcing until `stop`; from now on
        also stop running jobs that must stop (tasks.stopper)."""
        self._heartbeat = Heartbeat(self, queues, info, requeue)
        self._heartbeat.beat()
        self._heartbeat.start()
        self.start_stopper()

    def start_stopper(self) -> None:
        """Stop running jobs that must stop (tasks.stopper), from now until `stop`."""
        find = partial(self.jobs.stops, self.worker_id)
        self._stopper = Stopper(self.running, find, self.stop_job, on_death=self.on_death)
        self._stopper.start()

    def stop_job(self, job_id: str) -> None:
        """Stop a running job now: it ends `cancelled`, or with a 504 when past its deadline
        (its writer sees the flag: tasks/execute.py)."""
        self.publisher.stop(job_id)
        self.running.stop(job_id, self._cancel_in_backend)

    def _cancel_in_backend(self, kind: str, job_id: str) -> bool:
        cancel = getattr(self._backends.get(kind), "cancel", None)
        return bool(cancel is not None and cancel(job_id))

    def stop(self) -> None:
        """Clean shutdown: stop beating and tell readers at once that we are gone."""
        if self._stopper:
            self._stopper.stop()
        if self._heartbeat:
            self._heartbeat.stop()


class Heartbeat(threading.Thread):
    """Beats every `heartbeat_interval`; each beat may also run one reaper pass."""

    def __init__(
        self,
        rt: WorkerRuntime,
        queues: list[str],
        info: dict[str, str],
        requeue: Callable[[Requeued], None],
    ) -> None:
        super().__init__(name="router-heartbeat", daemon=True)
        self.rt, self.queues, self.info, self.requeue = rt, queues, info, requeue
        self.models: list[str] = []
        self._stopped = threading.Event()
        # beats in a row since the last Redis error: a worker just back from an outage does
        # not reap until the others have had a full TTL to beat again
        self._healthy = 0

    def beat(self) -> None:
        rt = self.rt
        models, facts = rt.announcement()
        self.models = models
        ttl = rt.settings.heartbeat_ttl
        queues, info = self.queues, {**self.info, **facts}
        if rt.vet_queues is not None:  # consumer liveness hook (see WorkerRuntime)
            queues, vetted = rt.vet_queues(queues)
            info.update(vetted)
        rt.liveness.beat(rt.worker_id, ttl, queues, models, info)

    def reap(self) -> None:
        rt = self.rt
        if not rt.liveness.try_lock(rt.worker_id, rt.settings.heartbeat_interval):
            return
        for job in rt.liveness.reap():
            log.warning("job %s: worker lost, redelivering as attempt %d", job.job_id, job.attempt)
            self.requeue(job)
        served = rt.liveness.live_queues()
        lost = rt.liveness.lost_deliveries(served, rt.settings.redeliver_after, rt.settings.job_ttl)
        for job in lost:
            log.warning(
                "job %s: queued with no message left on %s, publishing again", job.job_id, job.queue
            )
            self.requeue(job)
        rt.jobs.release(sorted(served))

    def run(self) -> None:
        run_guarded(self.name, self._beat_until_stopped, self.rt.on_death)

    def _beat_until_stopped(self) -> None:
        while not self._stopped.wait(self.rt.settings.heartbeat_interval):
            try:
                self.beat()
                self._healthy += 1
                if self._healthy > 3:
                    self.reap()
            except redis.RedisError as exc:
                # Redis unreachable: readers will see us expire; keep trying each interval.
                self._healthy = 0
                log.warning("heartbeat: %s", exc)

    def stop(self) -> None:
        self._stopped.set()
        try:
            self.rt.liveness.goodbye(self.rt.worker_id, self.queues, self.models)
        except redis.RedisError as exc:
            log.warning("goodbye not sent (%s); heartbeat will expire instead", exc)


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def runtime() -> WorkerRuntime:
    """The process's runtime, created on first use from the environment."""
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                _runtime = WorkerRuntime(Settings.load(os.environ), os.environ)
    return _runtime
