"""The job hash and its event stream: create, claim, finish, cancel, read.

Every state change is one Lua script, so that a cancel racing a claim, a redelivery racing
a finish, or a zombie worker writing late can never leave a job in two states at once.
Scripts are in `tasks/lua/`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any, cast

import orjson
import redis

from core.settings import DEFAULTS
from tasks import keys
from tasks.events import StreamEvent, Transcript
from tasks.keys import JobStatus
from workers.protocol import ChatJob

INCLUDE = "-- include: "
#: The tenant of a job made without an API key (auth off); no key can be named so.
ANONYMOUS = "-"


@cache
def lua(name: str) -> str:
    """The text of `tasks/lua/<name>.lua`, with the scripts it names on its
    `-- include: <name>` lines put before it (Redis scripts cannot call each other)."""
    text = resources.files("tasks").joinpath(f"lua/{name}.lua").read_text()
    lines = text.splitlines(keepends=True)
    included = [
        lua(line.removeprefix(INCLUDE).strip()) for line in lines if line.startswith(INCLUDE)
    ]
    return "".join([*included, *(line for line in lines if not line.startswith(INCLUDE))])


@dataclass(frozen=True)
class JobRecord:
    """A job's hash, decoded."""

    id: str
    status: JobStatus
    model: str
    backend: str
    queue: str
    attempt: int
    created: float
    started: float | None
    finished: float | None
    cancel_requested: bool
    worker: str
    deadline: float
    tenant: str = ANONYMOUS  # the API key (its name) that made it

    @classmethod
    def decode(cls, h: dict[str, str]) -> JobRecord:
        def ts(name: str) -> float | None:
            return float(h[name]) if h.get(name) else None

        return cls(
            id=h["id"],
            status=JobStatus(h["status"]),
            model=h.get("model", ""),
            backend=h.get("backend", ""),
            queue=h.get("queue", ""),
            attempt=int(h.get("attempt", "1")),
            created=float(h.get("created", "0")),
            started=ts("started"),
            finished=ts("finished"),
            cancel_requested=h.get("cancel") == "1",
            worker=h.get("worker", ""),
            deadline=float(h.get("deadline") or 0),
            tenant=h.get("tenant") or ANONYMOUS,
        )


class ClaimOutcome(StrEnum):
    """What claim.lua answered: run the job (OK), or why a delivery is dropped."""

    OK = "ok"
    MISSING = "missing"  # expired, or never existed
    FINISHED = "finished"  # already succeeded, failed or cancelled
    STALE = "stale"  # a newer attempt exists
    DUPLICATE = "duplicate"  # this attempt is already running
    CANCELLED = "cancelled"  # cancel requested while it was queued
    ORPHANED = "orphaned"  # the API process waiting for it is gone


@dataclass(frozen=True)
class Claim:
    """The outcome of a worker's claim: `job` is set only when it should run."""

    outcome: ClaimOutcome
    job: ChatJob | None = None
    token_base: int = 0


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


class QueueFull(Exception):
    """The queue's backlog is at its limit; `waiting` jobs are ahead."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"{waiting} jobs waiting")
        self.waiting = waiting


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


class JobStore:
    """Jobs in Redis, for the API (create, cancel, read) and the worker (claim, finish)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        job_ttl: int = DEFAULTS.job_ttl,
        idempotency_ttl: int = DEFAULTS.idempotency_ttl,
        ahead: int = DEFAULTS.dispatch_ahead,
    ) -> None:
        self.redis = client
        self.job_ttl = job_ttl
        self.idempotency_ttl = max(int(idempotency_ttl), 1)  # seconds an Idempotency-Key lasts
        self.ahead = max(int(ahead), 1)  # task messages a queue's list holds (release.lua)
        self._create = client.register_script(lua("create"))
        self._claim = client.register_script(lua("claim"))
        self._cancel = client.register_script(lua("cancel"))
        self._stops = client.register_script(lua("stops"))
        self.finish_script = client.register_script(lua("finish"))
        self._dispatch = client.register_script(lua("dispatch"))

    # -- API side -------------------------------------------------------------------------

    def create(
        self,
        job: ChatJob,
        queue: str,
        *,
        idempotency_key: str | None = None,
        digest: str = "",
        message: bytes | None = None,
        owner: str | None = None,
        limit: int = 0,
        tenant: str = ANONYMOUS,
        max_parallel: int = 0,
    ) -> str:
        """Store a queued job and hand its task `message` (tasks.dispatch) to fair dispatch
        on `queue`, in one step; returns its id, or the earlier job's id for a repeated key
        (nothing dispatched). The job waits its `tenant`'s turn (the API key's name) and for
        one of its `max_parallel` slots (0: no cap) before the message reaches the queue's
        list (tasks/lua/release.lua). `owner`: the API process holding the client's
        connection (a synchronous request); the job is dropped if that process dies before
        a worker starts it. `limit` > 0: raise QueueFull instead when that many jobs
        already wait on the queue. An Idempotency-Key is the tenant's own."""
        deadline = job.deadline or time.time() + 3600
        lifetime = int(deadline - time.time()) + self.job_ttl
        fields = {
            "id": job.id,
            "status": JobStatus.QUEUED.value,
            "model": job.model,
            "backend": job.backend,
            "queue": queue,
            "attempt": "1",
            "created": f"{job.created:.6f}",
            "deadline": f"{deadline:.3f}",
            "cancel": "0",
            "tenant": tenant,
            "request": orjson.dumps(job.to_dict()).decode(),
        }
        if owner:
            fields["owner"] = owner
        flat = [x for kv in fields.items() for x in kv]
        idem = ""
        if idempotency_key:
            scoped = idempotency_key if tenant == ANONYMOUS else f"{tenant}:{idempotency_key}"
            idem = keys.idempotency_key(scoped)
        res = self._create(
            keys=[keys.job_key(job.id), idem, keys.queued_key(queue), queue if message else ""],
            args=[
                max(lifetime, 1),
                self.idempotency_ttl,
                digest,
                message or b"",
                limit,
                keys.PREFIX,
                tenant,
                max_parallel,
                self.ahead,
                *flat,
            ],
        )
        if res[0] == "full":
            raise QueueFull(int(res[1]))
        if res[0] == "exists":
            if res[2] != digest:
                raise IdempotencyConflict(res[1])
            return str(res[1])
        return job.id

    def cancel(self, job_id: str) -> JobStatus | None:
        """Cancel; returns the status after the call (None for an unknown job)."""
        res = self._cancel(
            keys=[keys.job_key(job_id), keys.events_key(job_id)],
            args=[self.job_ttl, job_id, keys.PREFIX, self.ahead],
        )
        return None if res == "missing" else JobStatus(res)

    def release(self, queues: list[str]) -> None:
        """Release held jobs on `queues` if their lists have room (the reaper's pass: held
        jobs move even when nothing else happens on their queue)."""
        if queues:
            self._dispatch(keys=[], args=[keys.PREFIX, self.ahead, *queues])

    def backlog(self, queue: str, tenant: str | None = None) -> int:
        """How many jobs on `queue` were accepted and not started yet (held, their message
        waiting in Redis, or reserved by a worker): all of them, or `tenant`'s."""
        index = keys.queued_key(queue) if tenant is None else keys.tenant_queued_key(queue, tenant)
        return int(self.redis.zcard(index))

    def turns(self, queue: str) -> int:
        """How many tenants have jobs held on `queue` (release.lua serves them in turn)."""
        return int(self.redis.llen(keys.ring_key(queue)))

    def stops(self, worker_id: str, job_ids: list[str]) -> list[str]:
        """Which of this worker's running jobs must stop now: cancelled, taken over by a
        later attempt, or synchronous ones whose API process died (flagged cancelled)."""
        if not job_ids:
            return []
        found = self._stops(keys=[keys.APIS, *(keys.job_key(j) for j in job_ids)], args=[worker_id])
        return [str(j) for j in found]

    def record(self, job_id: str) -> JobRecord | None:
        h: dict[str, str] = cast(Any, self.redis.hgetall(keys.job_key(job_id)))
        return JobRecord.decode(h) if h else None

    def snapshot(self, job_id: str) -> tuple[JobRecord, Transcript] | None:
        """The hash and every event so far, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.job_key(job_id))
        pipe.xrange(keys.events_key(job_id))
        h, entries = cast(Any, pipe.execute())
        if not h:
            return None
        transcript = Transcript()
        transcript.extend(StreamEvent.decode(i, f) for i, f in entries)
        return JobRecord.decode(h), transcript

    def read(self, job_id: str, after: str, block_ms: int) -> list[StreamEvent]:
        """Events after entry id `after`, waiting up to `block_ms` for the first one. Never
        less than 1 ms: to Redis, `XREAD BLOCK 0` means wait forever."""
        block = max(int(block_ms), 1)
        res: Any = self.redis.xread({keys.events_key(job_id): after}, block=block, count=1024)
        if not res:
            return []
        return [StreamEvent.decode(i, f) for i, f in res[0][1]]

    # -- worker side ----------------------------------------------------------------------

    def finish_call(
        self, job_id: str, attempt: int, worker_id: str, status: str, fields: dict[str, str]
    ) -> tuple[list[str], list[str]]:
        """The keys and arguments of finish.lua (`finish_script`) ending this attempt with
        `status` and a terminal event of `fields`; the worker's publisher runs it behind the
        job's tokens."""
        script_keys = [
            keys.job_key(job_id),
            keys.events_key(job_id),
            keys.worker_jobs_key(worker_id),
        ]
        args = [str(attempt), worker_id, status, str(self.job_ttl), job_id, keys.PREFIX]
        args += [str(self.ahead), *(x for kv in fields.items() for x in kv)]
        return script_keys, args

    def claim(self, job_id: str, attempt: int, worker_id: str) -> Claim:
        """Take a delivered job, or say why not (finished, stale, duplicate, cancelled...)."""
        res = self._claim(
            keys=[
                keys.job_key(job_id),
                keys.events_key(job_id),
                keys.worker_jobs_key(worker_id),
                keys.APIS,
            ],
            args=[str(attempt), worker_id, self.job_ttl, job_id, keys.PREFIX, self.ahead],
        )
        outcome = ClaimOutcome(res[0])
        if outcome is not ClaimOutcome.OK:
            return Claim(outcome)
        return Claim(outcome, ChatJob.from_dict(orjson.loads(res[1])), int(res[2]))
