"""Group commit of stream events: one Redis pipeline carries the tokens of every job in the
process that produced one since the last flush.

A lone stream flushes each token at once (no added latency); under load, tokens queue up
while a pipeline is in flight and the next pipeline takes them all, so no token costs a
round trip of its own. The same pipeline reads each job's cancel flag back, which is how
a worker learns of a cancel within one token without polling.

Redis errors are retried forever (tokens must not be lost); anything else ends the
publishing thread, and `on_death` is told (a worker then exits: tasks/runtime.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from tasks import keys
from tasks.jobs import lua
from tasks.threads import ThreadDeath, run_guarded

log = logging.getLogger(__name__)

FENCED = "equal or smaller than the target stream top item"


@dataclass
class _Op:
    job_id: str
    stream_id: str = "*"
    fields: dict[str, str] | None = None
    expire: int = 0  # set the stream's TTL along with this event (first token)
    finish: tuple[list[str], list[str]] | None = None  # (keys, args) of finish.lua
    call: Callable[[Any], object] | None = None  # adds other commands to the pipeline
    on_result: Callable[[object], None] | None = None  # told the call's reply (or error)
    done: threading.Event | None = None
    result: int = field(default=0)


class EventPublisher:
    """Writes job events from any thread or greenlet, in order, in batches."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        max_batch: int = 512,
        on_death: ThreadDeath | None = None,
    ) -> None:
        self.redis = client
        self.max_batch = max_batch
        self.on_death = on_death  # None: the thread just dies (its exception is printed)
        self._queue: queue.Queue[_Op] = queue.Queue()
        self._stop_flags: set[str] = set()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._finish_sha = ""

    def token(self, job_id: str, stream_id: str, fields: dict[str, str], expire: int) -> None:
        """Queue a token event with its explicit stream id; `expire` > 0 sets the TTL."""
        self._put(_Op(job_id, stream_id, fields, expire))

    def finish(self, job_id: str, script_keys: list[str], args: list[str], timeout: float) -> bool:
        """Queue the terminal write behind this job's tokens and wait for it; True if written."""
        op = _Op(job_id, finish=(script_keys, args), done=threading.Event())
        self._put(op)
        if op.done and not op.done.wait(timeout):
            log.error("job %s: terminal event not written within %.0fs", job_id, timeout)
            return False
        return op.result == 1

    def call(
        self, job_id: str, add: Callable[[Any], object], on_result: Callable[[object], None]
    ) -> None:
        """Queue other writes of a job to ride in the next pipeline (`add(pipe)` adds them);
        `on_result` gets the reply or the error. Nothing waits for it."""
        self._put(_Op(job_id, call=add, on_result=on_result))

    def should_stop(self, job_id: str) -> bool:
        """True once the job was cancelled or taken over by a later attempt."""
        return job_id in self._stop_flags

    def stop(self, job_id: str) -> None:
        """Tell the job's writer to stop (a cancel found by other means than a flush)."""
        self._stop_flags.add(job_id)

    def forget(self, job_id: str) -> None:
        self._stop_flags.discard(job_id)

    def _put(self, op: _Op) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="event-publisher", daemon=True
                    )
                    self._thread.start()
        self._queue.put(op)

    def _run(self) -> None:
        run_guarded("event-publisher", self._publish_forever, self.on_death)

    def _publish_forever(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._flush_until_written(batch)

    def _flush_until_written(self, batch: list[_Op]) -> None:
        delay, retrying = 0.05, False
        while True:
            try:
                self._flush(batch, retrying)
                return
            except redis.RedisError as exc:
                # Redis unreachable: keep the batch and retry; tokens must not be lost.
                log.warning("event publisher: %s; retrying in %.2fs", exc, delay)
                time.sleep(delay)
                delay, retrying = min(delay * 2, 2.0), True

    def _flush(self, batch: list[_Op], retrying: bool) -> None:
        if not self._finish_sha:
            self._finish_sha = self.redis.script_load(lua("finish"))
        pipe = self.redis.pipeline(transaction=False)
        slots: list[tuple[_Op, int]] = []
        for op in batch:
            slots.append((op, len(pipe)))
            if op.finish:
                k, a = op.finish
                pipe.evalsha(self._finish_sha, len(k), *k, *a)
            elif op.call:
                op.call(pipe)
            else:
                fields: Any = op.fields or {}
                pipe.xadd(keys.events_key(op.job_id), fields, id=op.stream_id)
                if op.expire:
                    pipe.expire(keys.events_key(op.job_id), op.expire)
        polled = sorted({op.job_id for op in batch if op.fields is not None})
        for job_id in polled:
            pipe.hget(keys.job_key(job_id), "cancel")
        results = pipe.execute(raise_on_error=False)
        for op, slot in slots:
            self._settle(op, results[slot], retrying)
        for job_id, flag in zip(polled, results[len(results) - len(polled) :], strict=True):
            if flag == "1":
                self._stop_flags.add(job_id)

    def _settle(self, op: _Op, result: object, retrying: bool) -> None:
        if op.call:
            if op.on_result:
                op.on_result(result)
            return
        if isinstance(result, redis.exceptions.NoScriptError) and op.finish:
            # Redis lost its scripts (a restart): load the script again, write this one alone
            self._finish_sha = self.redis.script_load(lua("finish"))
            k, a = op.finish
            result = self.redis.evalsha(self._finish_sha, len(k), *k, *a)
        if isinstance(result, redis.ResponseError):
            if FENCED in str(result) and not retrying:
                self._stop_flags.add(op.job_id)  # a later attempt owns the stream now
            elif FENCED in str(result):
                pass  # our own write from the try that lost its connection
            else:
                log.error("job %s: event write failed: %s", op.job_id, result)
        elif op.finish:
            op.result = int(result)  # type: ignore[call-overload]
        if op.done:
            op.done.set()
