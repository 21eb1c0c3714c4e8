"""The accountant: one thread per API process that records what no request records.

What is recorded, when and by whom is told in api/accounting.py's docstring, with the
request's side (`Completion`, `begin`). Here: the `Accountant` a Completion records
through, whose thread removes ended jobs from this process's ledger (api/ledger.py) before
recording them, follows the jobs nobody here reads to their end, gives up on those past
GRACE, and adopts the ledgers of API processes that are gone; and `init_app`, which gives
an app its accountant.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from flask import Flask

from api.accounting import TIMED_OUT, Completion, Outcome
from api.ledger import Entry, Ledger
from api.metrics import NONE, record_completion, record_key_completion
from registry.requestlog import LogEntry, cost_usd
from tasks.events import StreamEvent
from tasks.keys import events_key
from tasks.tenants import NANO, Hold, Tenants

#: api/accounting.py's logger: accounting logs under one name, whichever module writes
log = logging.getLogger("api.accounting")

GRACE = 30.0  # seconds past its deadline a job's end is waited for (a stopped job ends by then)
READ_BLOCK = 0.25  # seconds the accountant waits on the streams it follows, per read
READ_PAUSE = 0.05  # seconds between reads that found events: bounds the read rate under load
READ_COUNT = 256  # events per stream per read
ADOPT_INTERVAL = 5.0  # seconds between looks for ledgers of API processes that are gone
RETRY_MAX = 2.0  # longest wait between tries while Redis is unavailable


class LogSink(Protocol):
    """Where finished completions go besides the metrics (the request-log writer)."""

    def submit(self, entry: LogEntry) -> bool: ...


@dataclass(frozen=True)
class _Op:
    """Work for the accountant thread."""

    kind: str  # "follow", "close", "drop" or "stop"
    completion: Completion | None = None
    outcome: Outcome | None = None
    job_id: str = ""


class Accountant:
    """Records completions for one app, and owns its API process's ledger.

    Requests call `begin`, and a Completion calls the rest. One daemon thread per process (a
    greenlet under gevent), started by the process's first request (after gunicorn forks), does
    what must not hold up a request: it removes finished jobs from the ledger and records those
    it removed (in batches, one pipeline each), follows the jobs nobody reads with one XREAD
    over all their streams, records 504 for those past GRACE, and every ADOPT_INTERVAL takes
    over the ledgers of API processes that are gone. While Redis is unavailable it retries;
    nothing is recorded before its ledger entry is removed."""

    def __init__(
        self,
        client: redis.Redis,
        owner: Callable[[], str],
        sink: LogSink | None,
        *,
        grace: float = GRACE,
        adopt_interval: float = ADOPT_INTERVAL,
    ) -> None:
        self.redis, self.owner, self.sink = client, owner, sink
        self.ledger = Ledger(client)
        self.tenants = Tenants(client)
        self.grace, self.adopt_interval = grace, adopt_interval
        self.ops: queue.Queue[_Op] = queue.Queue()
        self.recorded = 0  # completions this process recorded
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def begin(
        self, requested: str, *, request_id: str = "", key_name: str | None = None
    ) -> Completion:
        """A completion of the model `requested` (as the registry names it) begins now."""
        self.start()
        return Completion(self, requested, request_id=request_id, key_name=key_name)

    # -- called by completions --------------------------------------------------------------

    def open(self, entry: Entry) -> bool:
        """Put `entry` in this process's ledger; False if Redis did not take it (this
        process then records it alone, and it is lost if the process stops first)."""
        try:
            self.ledger.open(self.owner(), entry)
        except redis.RedisError as exc:
            log.warning("accounting: job %s not in the ledger (%s)", entry.job_id, exc)
            return False
        return True

    def settle(self, completion: Completion, outcome: Outcome) -> None:
        """Record a finished completion: at once when no ledger entry stands for it, else
        once the thread has removed that entry."""
        if completion.registered:
            self._put(_Op("close", completion, outcome))
        else:
            self.record(completion, outcome)

    def drop(self, job_id: str) -> None:
        """The job answers no completion (a fallback replaced it): out of the ledger."""
        self._put(_Op("drop", job_id=job_id))

    def follow(self, completion: Completion) -> None:
        """Follow the completion's job from its last event seen to its end."""
        self._put(_Op("follow", completion))

    def release(self, hold: Hold | None, tokens: int, cost: float) -> None:
        """Settle what admission reserved of a key's limits to the `tokens` and `cost` (USD)
        really used (api/tenancy.py). A failure leaves the reservation in place: the TPM
        bucket drains it within a minute; a budget keeps it until its period ends."""
        if hold is None:
            return
        try:
            self.tenants.settle(hold, tokens, round(cost * NANO))
        except redis.RedisError as exc:
            log.error("accounting: reservation of %s not settled (%s)", hold.tenant, exc)

    def record(self, completion: Completion, outcome: Outcome) -> None:
        """Settle the completion's reservation, count it in the metrics and hand it to the
        request log."""
        c, o, job = completion, outcome, completion.job
        backend = (job.backend if job else "") or NONE
        fallback = job.model if job and job.model != c.requested else None
        cost = 0.0
        if job is not None:
            cost = cost_usd(o.prompt_tokens, o.completion_tokens, job.input_price, job.output_price)
        self.release(c.hold, o.prompt_tokens + o.completion_tokens, cost)
        try:
            record_completion(
                c.requested,
                backend,
                o.status,
                o.latency,
                o.ttft,
                o.prompt_tokens,
                o.completion_tokens,
                fallback,
            )
            if c.key_name is not None:
                record_key_completion(
                    c.key_name, c.requested, o.status, o.prompt_tokens, o.completion_tokens, cost
                )
            self.recorded += 1
            if self.sink is None:
                return
            self.sink.submit(
                LogEntry(
                    time=c.started_at + o.latency,
                    request_id=c.request_id,
                    job_id=job.job_id if job else None,
                    key_name=c.key_name,
                    model=c.requested,
                    backend=backend,
                    status=o.status,
                    latency_ms=round(o.latency * 1000, 3),
                    ttft_ms=None if o.ttft is None else round(o.ttft * 1000, 3),
                    prompt_tokens=o.prompt_tokens,
                    completion_tokens=o.completion_tokens,
                    cost_usd=cost,
                    fallback=fallback,
                )
            )
        except Exception:
            # Recording must never fail a request nor stop the thread: log it and go on.
            log.exception("could not record completion %s", job.job_id if job else "")

    # -- the thread -------------------------------------------------------------------------

    def running(self) -> bool:
        """Whether this process's thread is up (a forked child has none)."""
        t = self._thread
        return t is not None and self._pid == os.getpid() and t.is_alive()

    def start(self) -> None:
        """Start this process's thread (again after a fork or a close). The first start in
        a process announces its presence, then registers `close` to run at exit: exit hooks
        run last first, so the thread settles before the presence says goodbye."""
        if self.running():
            return
        with self._lock:
            if self.running():
                return
            if self._pid != os.getpid():
                with contextlib.suppress(redis.RedisError):  # else announced on first use
                    self.owner()
                atexit.register(self.close)
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="accounting", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Record what has ended so far and stop the thread (waits up to `timeout`). Jobs
        still followed stay in the ledger, for another API process to adopt."""
        thread = self._thread
        if thread is None or not self.running():
            return
        self.ops.put(_Op("stop"))
        thread.join(timeout)

    def _put(self, op: _Op) -> None:
        self.start()
        self.ops.put(op)

    def _take(self, wait: float) -> list[_Op]:
        """The ops queued so far, waiting up to `wait` seconds for the first."""
        ops: list[_Op] = []
        try:
            ops.append(self.ops.get(timeout=wait) if wait > 0 else self.ops.get_nowait())
            while True:
                ops.append(self.ops.get_nowait())
        except queue.Empty:
            return ops

    def _pause(self, seconds: float) -> list[_Op]:
        """Wait `seconds`, taking the ops that come meanwhile; a stop (at exit) ends it."""
        until = time.monotonic() + seconds
        ops: list[_Op] = []
        while (left := until - time.monotonic()) > 0 and not any(o.kind == "stop" for o in ops):
            ops += self._take(left)
        return ops

    def _run(self) -> None:
        following: dict[str, Completion] = {}
        closing: list[tuple[Completion, Outcome]] = []
        dropping: list[str] = []
        early: list[_Op] = []  # taken while pausing: handled next turn
        next_adopt, delay, stopping = 0.0, 0.0, False
        while True:
            idle = not (following or closing or dropping or stopping or early)
            ops = early + self._take(max(next_adopt - time.monotonic(), 0.0) if idle else 0.0)
            early = []
            for op in ops:
                if op.kind == "stop":
                    stopping = True
                elif op.kind == "drop":
                    dropping.append(op.job_id)
                elif op.completion is not None and op.completion.job is not None:
                    if op.kind == "close" and op.outcome is not None:
                        closing.append((op.completion, op.outcome))
                    elif op.kind == "follow":
                        following[op.completion.job.job_id] = op.completion
            try:
                self._settle(closing, dropping)
                if stopping:
                    self._left_behind(following)
                    return
                if time.monotonic() >= next_adopt:
                    for entry in self.ledger.adopt(self.owner()):
                        following.setdefault(entry.job_id, Completion.adopted(self, entry))
                    next_adopt = time.monotonic() + self.adopt_interval
                if following:
                    read = self._read(following)
                    self._give_up(following, read)
                    if read:
                        early = self._pause(READ_PAUSE)
                delay = 0.0
            except redis.RedisError as exc:
                if stopping:
                    log.warning("accounting: Redis unavailable at exit (%s)", exc)
                    return
                level = logging.DEBUG if delay else logging.WARNING  # once per outage
                delay = min(delay * 2 or 0.1, RETRY_MAX)
                log.log(level, "accounting: Redis unavailable (%s); retrying", exc)
                early = self._pause(delay)
            except Exception:  # a bug must not end accounting for the life of the process
                log.exception("accounting: unexpected error; going on")
                early = self._pause(RETRY_MAX)

    def _settle(self, closing: list[tuple[Completion, Outcome]], dropping: list[str]) -> None:
        """Remove ended and superseded jobs from the ledger; record the ended ones removed."""
        if not closing and not dropping:
            return
        ids = [c.job.job_id for c, _ in closing if c.job is not None]
        removed = self.ledger.remove(self.owner(), ids + dropping)
        for (completion, outcome), mine in zip(closing, removed, strict=False):
            if mine:
                self.record(completion, outcome)
            elif completion.job is not None:  # taken for gone and adopted: the adopter records
                job_id = completion.job.job_id
                log.info("accounting: job %s recorded by the API process that adopted it", job_id)
        closing.clear()
        dropping.clear()

    def _read(self, following: dict[str, Completion]) -> set[str]:
        """One read of every followed stream after its last event seen; the jobs that had
        events (READ_COUNT at most each: a long stream takes several reads)."""
        streams: Any = {events_key(job_id): c.last_id for job_id, c in following.items()}
        jobs = {events_key(job_id): job_id for job_id in following}
        found: Any = self.redis.xread(streams, count=READ_COUNT, block=int(READ_BLOCK * 1000))
        read = set()
        for key, entries in found or []:
            job_id = jobs[key]
            read.add(job_id)
            completion = following[job_id]
            for entry_id, fields in entries:
                try:
                    event = StreamEvent.decode(entry_id, fields)
                except (KeyError, ValueError) as exc:
                    log.error("accounting: job %s: event %s unreadable (%r)", job_id, entry_id, exc)
                    completion.last_id = entry_id
                    continue
                completion.see(event)
                if completion.finished:
                    del following[job_id]
                    break
        return read

    def _give_up(self, following: dict[str, Completion], read: set[str]) -> None:
        """Record 504 for followed jobs whose end was not seen by GRACE past their deadline
        (unless events are still being read: an adopted job's stream may be long)."""
        now = time.time()
        for job_id, completion in list(following.items()):
            job = completion.job
            if job is not None and job_id not in read and now > job.deadline + self.grace:
                log.warning("accounting: job %s: no end seen; recorded as timed out", job_id)
                completion.finish(completion.status or TIMED_OUT)
                del following[job_id]

    def _left_behind(self, following: dict[str, Completion]) -> None:
        """At exit: jobs not yet ended are another process's to record, if in the ledger."""
        lost = [job_id for job_id, c in following.items() if not c.registered]
        if lost:
            log.warning("accounting: %d unfinished jobs not in the ledger, not recorded", len(lost))


def init_app(app: Flask) -> Accountant:
    """Give the app its accountant, at app.extensions["accounting"] (after the request log:
    it records into its writer): on the app's Redis, its ledger this API process's (its
    presence id). Its thread starts with the process's first request of any kind, a health
    probe too, so that a restarted API adopts what stopped processes left without waiting
    for a completion; it stops at exit. Idempotent."""
    found: Accountant | None = app.extensions.get("accounting")
    if found is None:
        services = app.extensions["services"]
        found = Accountant(services.redis, services.presence.id, app.extensions.get("requestlog"))
        app.extensions["accounting"] = found
        app.before_request(found.start)
    return found
