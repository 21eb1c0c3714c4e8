"""Every Redis key, queue name, job status and stream event type, in one place.

Key layout (all under the `router:` prefix so one Redis can be shared):

    router:job:{id}               hash    job state: status, attempt, worker, request, ...
    router:job:{id}:events        stream  token / restart / done / error / cancelled events
    router:idem:{key}             string  Idempotency-Key -> job id
    router:workers                zset    worker id -> alive until (Redis server time)
    router:worker:{id}            hash    what a worker announced (queues, host, pid, ...)
    router:worker:{id}:jobs       set     jobs a worker is running (for redelivery)
    router:queue:{queue}:workers  zset    worker id -> alive until, per consumed queue
    router:queue:{q}:model:{m}:workers  zset  the same, per model a local worker has loaded
    router:reaper                 string  lock: one reaper pass at a time across workers
    router:queue:{q}:queued       zset    job id -> when it was (re)queued, while queued: the
                                          queue's backlog (jobs accepted, not yet started)
    router:apis                   zset    API process id -> alive until (Redis server time)
    router:accounting:{api}       hash    job id -> what the completion's record needs, while
                                          that API process owes it (api/ledger.py)
    router:accounting:apis        set     API processes holding a ledger
    router:queue:{q}:queued:{t}   zset    the same, for one tenant (API key): its queue share
    router:queue:{q}:ring         list    API keys (tenants) with jobs held on the queue, in the
                                          order they are served (tasks/lua/release.lua)
    router:queue:{q}:held:{t}     list    a tenant's jobs held back on the queue, oldest last
    router:tenant:{t}             hash    its rate buckets and max-parallel (tasks/tenants.py)
    router:tenant:{t}:spend:{p}   hash    its spent and reserved budget in period p
    router:tenant:{t}:running     zset    its jobs dispatched and not ended -> deadline
    router:backend:{b}:circuit    hash    circuit breaker: state, failures, opened_at
    router:backend:{b}:probe      string  the one half-open probe in flight (expires)
    router:backend:{b}:outcomes   list    recent jobs, newest first: "ts:ttft_ms:total_ms:ok"
"""

from __future__ import annotations

from enum import StrEnum

from workers.providers import provider_table

PREFIX = "router"

#: Celery queue of the embedded local worker (a Mac runs `celery -A tasks worker -Q local-mps`).
LOCAL_QUEUE = "local-mps"
#: Provider queues: one per backend listed in workers/providers.json, named after it.
PROVIDER_QUEUES = frozenset(provider_table())

KNOWN_QUEUES = PROVIDER_QUEUES | {LOCAL_QUEUE}

TASK_NAME = "router.generate"


def task_name(queue: str) -> str:
    """The task name a job on `queue` is sent as: `router.generate.<queue>` for the known
    queues (so Flower tells backends apart), the generic name for operator-added ones."""
    return f"{TASK_NAME}.{queue}" if queue in KNOWN_QUEUES else TASK_NAME


WORKERS = f"{PREFIX}:workers"
APIS = f"{PREFIX}:apis"
LEDGER_OWNERS = f"{PREFIX}:accounting:apis"
REAPER_LOCK = f"{PREFIX}:reaper"


def job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def events_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:events"


def idempotency_key(key: str) -> str:
    return f"{PREFIX}:idem:{key}"


def worker_key(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


def worker_jobs_key(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}:jobs"


def queue_workers_key(queue: str) -> str:
    return f"{PREFIX}:queue:{queue}:workers"


def queued_key(queue: str) -> str:
    """The queue's backlog: jobs accepted and not yet started, by when they were queued.
    The Lua scripts build the same name from PREFIX (tests/tasks/test_lua_keys.py ties
    every name a script builds to this module)."""
    return f"{PREFIX}:queue:{queue}:queued"


def tenant_queued_key(queue: str, tenant: str) -> str:
    """A tenant's own backlog on `queue`: its share of the queue limit (create.lua)."""
    return f"{queued_key(queue)}:{tenant}"


def model_workers_key(queue: str, model: str) -> str:
    return f"{PREFIX}:queue:{queue}:model:{model}:workers"


def ledger_key(api: str) -> str:
    """The accounting ledger of API process `api` (its presence id): the completions it
    still owes a record (api/ledger.py)."""
    return f"{PREFIX}:accounting:{api}"


def ring_key(queue: str) -> str:
    """The tenants with jobs held on `queue`, in turn (tasks/lua/release.lua)."""
    return f"{PREFIX}:queue:{queue}:ring"


def held_key(queue: str, tenant: str) -> str:
    return f"{PREFIX}:queue:{queue}:held:{tenant}"


def tenant_key(tenant: str) -> str:
    return f"{PREFIX}:tenant:{tenant}"


def spend_key(tenant: str, period: str) -> str:
    return f"{PREFIX}:tenant:{tenant}:spend:{period}"


def running_key(tenant: str) -> str:
    return f"{PREFIX}:tenant:{tenant}:running"


def circuit_key(backend: str) -> str:
    return f"{PREFIX}:backend:{backend}:circuit"


def probe_key(backend: str) -> str:
    return f"{PREFIX}:backend:{backend}:probe"


def outcomes_key(backend: str) -> str:
    return f"{PREFIX}:backend:{backend}:outcomes"


class JobStatus(StrEnum):
    """Where a job is in its life; the last three are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Event(StrEnum):
    """Types of entries on a job's event stream."""

    TOKEN = "token"
    RESTART = "restart"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (Event.DONE, Event.ERROR, Event.CANCELLED)
