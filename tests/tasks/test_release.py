"""Fair dispatch (tasks/lua/release.lua) against a real Redis.

A job with a task message is held in its tenant's (its API key's) list; `release` moves held
jobs onto the queue's list, one tenant at a time in ring order, while fewer than `ahead`
messages wait there. Here a "worker" is a test that pops the list the way Celery does
(BRPOP: oldest first) and claims the job it names.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from tasks import keys
from tasks.jobs import ANONYMOUS, IdempotencyConflict, JobStore, QueueFull
from tasks.keys import JobStatus
from tasks.liveness import Liveness, Requeued

Q = "q"


def submit(store: JobStore, make_job, job_id: str, tenant: str = "A", **kw) -> str:  # type: ignore[no-untyped-def]
    """Create `job_id` for `tenant` with a task message naming it (the message's content
    does not matter to release.lua)."""
    job = kw.pop("job", None) or make_job(job_id)
    return store.create(job, Q, message=f"m:{job_id}".encode(), tenant=tenant, **kw)


def listed(r) -> list[str]:  # type: ignore[no-untyped-def]
    """The jobs whose message waits on the queue's list, in the order workers get them."""
    return [m.removeprefix("m:") for m in reversed(r.lrange(Q, 0, -1))]


def held(r, tenant: str = "A") -> list[str]:  # type: ignore[no-untyped-def]
    """The tenant's held jobs, oldest first (the next to be released first)."""
    return list(reversed(r.lrange(keys.held_key(Q, tenant), 0, -1)))


def pop(r) -> str | None:  # type: ignore[no-untyped-def]
    """A worker reserves the oldest message (Celery's BRPOP), without claiming it yet."""
    msg = r.rpop(Q)
    return msg.removeprefix("m:") if msg else None


def take(r, store: JobStore, worker: str = "w1") -> str | None:  # type: ignore[no-untyped-def]
    """A worker reserves the oldest message and claims its job; the job's id."""
    job_id = pop(r)
    if job_id is not None:
        store.claim(job_id, 1, worker)
    return job_id


def end(store: JobStore, job_id: str, worker: str = "w1", status: str = "succeeded") -> None:
    """The worker finishes the job, as tasks/execute.py does."""
    k, args = store.finish_call(job_id, 1, worker, status, {"type": "done"})
    assert int(store.finish_script(keys=k, args=args)) == 1


def drain(r, store: JobStore) -> list[str]:  # type: ignore[no-untyped-def]
    """Take and finish every job, one at a time; the order they were taken in."""
    order = []
    while (job_id := take(r, store)) is not None:
        assert r.llen(Q) <= store.ahead
        end(store, job_id)
        order.append(job_id)
    return order


def test_a_job_waits_held_until_released(r, make_job) -> None:
    store = JobStore(r, ahead=1)
    submit(store, make_job, "a0")
    submit(store, make_job, "a1")
    assert listed(r) == ["a0"] and held(r) == ["a1"]
    assert r.lrange(keys.ring_key(Q), 0, -1) == ["A"]
    h0, h1 = r.hgetall(keys.job_key("a0")), r.hgetall(keys.job_key("a1"))
    assert "held" not in h0 and "message" not in h0  # released: the list has its message
    assert h1["held"] == "1" and h1["message"] == "m:a1" and h1["tenant"] == "A"
    assert store.record("a1").status is JobStatus.QUEUED and store.record("a1").tenant == "A"
    assert store.backlog(Q) == 2  # held jobs are in the backlog


def test_a_job_without_a_message_is_not_dispatched(r, make_job) -> None:
    store = JobStore(r, ahead=1)
    store.create(make_job("j"), Q, tenant="A")
    assert r.llen(Q) == 0 and not r.exists(keys.held_key(Q, "A"), keys.ring_key(Q))


def test_one_tenants_jobs_keep_their_order(r, make_job) -> None:
    store = JobStore(r, ahead=2)
    ids = [f"a{i}" for i in range(8)]
    for job_id in ids:
        submit(store, make_job, job_id)
    assert listed(r) == ["a0", "a1"]
    assert drain(r, store) == ids
    assert not r.exists(keys.ring_key(Q), keys.held_key(Q, "A"))


def test_a_second_tenant_goes_before_the_first_ones_backlog(r, make_job) -> None:
    """A has 10 jobs held; B submits one: after one release B's message is on the list,
    ahead of every A job still held."""
    store = JobStore(r, ahead=2)
    for i in range(10):
        submit(store, make_job, f"a{i}")
    submit(store, make_job, "b0", tenant="B")
    assert listed(r) == ["a0", "a1"]  # the list was full: nothing moved yet
    assert r.lrange(keys.ring_key(Q), 0, -1) == ["B", "A"]  # B, with nothing held, first
    assert take(r, store) == "a0"  # one claim: one release
    assert listed(r) == ["a1", "b0"]
    assert held(r, "A") == [f"a{i}" for i in range(2, 10)] and held(r, "B") == []
    assert drain(r, store) == ["a1", "b0", *(f"a{i}" for i in range(2, 10))]


def test_two_tenants_with_backlogs_alternate(r, make_job) -> None:
    store = JobStore(r, ahead=2)
    for i in range(6):
        submit(store, make_job, f"a{i}")
    for i in range(3):
        submit(store, make_job, f"b{i}", tenant="B")
    order = drain(r, store)
    assert order == ["a0", "a1", "b0", "a2", "b1", "a3", "b2", "a4", "a5"]


def test_three_tenants_share_the_list_in_turn(r, make_job) -> None:
    store = JobStore(r, ahead=1)
    for tenant in "ABC":
        for i in range(3):
            submit(store, make_job, f"{tenant.lower()}{i}", tenant=tenant)
    tenants = [job_id[0] for job_id in drain(r, store)]
    # a0 went straight to the list; then each tenant in turn, the newest in the ring first
    assert "".join(tenants) == "acbacbacb"


@pytest.mark.parametrize("ahead", [1, 2, 3])
def test_the_list_never_holds_more_than_ahead(r, make_job, ahead: int) -> None:
    store = JobStore(r, ahead=ahead)
    n = 0
    for round_ in range(6):
        for tenant in "ABCD"[: round_ % 4 + 1]:
            submit(store, make_job, f"{tenant.lower()}{n}", tenant=tenant)
            n += 1
            assert r.llen(Q) == min(ahead, n - round_)  # full, never over
        take(r, store)  # one a round
    taken = drain(r, store)
    assert len(taken) + 6 == n  # every job reached the list exactly once
    assert r.llen(Q) == 0 and not r.exists(keys.ring_key(Q))


def test_a_claim_releases_the_next(r, make_job) -> None:
    store = JobStore(r, ahead=1)
    for i in range(3):
        submit(store, make_job, f"a{i}")
    assert pop(r) == "a0"  # reserved by a worker: the list is empty, nothing moved yet
    assert listed(r) == [] and held(r) == ["a1", "a2"]
    assert store.claim("a0", 1, "w1").outcome == "ok"
    assert listed(r) == ["a1"] and held(r) == ["a2"]
    # a delivery dropped at claim releases too
    assert pop(r) == "a1"
    store.cancel("a1")
    assert store.claim("a1", 1, "w1").outcome == "finished"
    assert listed(r) == ["a2"] and held(r) == []


def test_max_parallel_holds_the_second_job_until_the_first_finishes(r, make_job) -> None:
    store = JobStore(r, ahead=2)
    submit(store, make_job, "a0", max_parallel=1)
    submit(store, make_job, "a1", max_parallel=1)
    assert listed(r) == ["a0"] and held(r) == ["a1"]  # room on the list, but A is at its cap
    assert r.hget(keys.tenant_key("A"), "parallel") == "1"
    assert r.zrange(keys.running_key("A"), 0, -1) == ["a0"]
    submit(store, make_job, "b0", tenant="B")  # another key is not held back by A's cap
    assert listed(r) == ["a0", "b0"]
    assert take(r, store) == "a0"
    assert listed(r) == ["b0"] and held(r) == ["a1"]  # running: still A's one slot
    store.release([Q])
    assert held(r) == ["a1"]
    end(store, "a0")
    assert listed(r) == ["b0", "a1"] and held(r) == []
    assert r.zrange(keys.running_key("A"), 0, -1) == ["a1"]


def test_max_parallel_counts_a_failed_end_too(r, make_job) -> None:
    store = JobStore(r, ahead=2)
    for i in range(3):
        submit(store, make_job, f"a{i}", max_parallel=2)
    assert listed(r) == ["a0", "a1"] and held(r) == ["a2"]
    take(r, store)
    take(r, store)
    assert held(r) == ["a2"]
    end(store, "a1", status="failed")
    assert listed(r) == ["a2"]


def test_a_cancel_while_queued_frees_the_slot(r, make_job) -> None:
    """The first job, released but not started, is cancelled: the second goes at once."""
    store = JobStore(r, ahead=2)
    submit(store, make_job, "a0", max_parallel=1)
    submit(store, make_job, "a1", max_parallel=1)
    assert listed(r) == ["a0"]
    assert store.cancel("a0") is JobStatus.CANCELLED
    assert listed(r) == ["a0", "a1"]  # a0's message is dropped at its claim
    assert r.zrange(keys.running_key("A"), 0, -1) == ["a1"]
    assert take(r, store) == "a0" and store.record("a0").status is JobStatus.CANCELLED
    assert take(r, store) == "a1" and store.record("a1").status is JobStatus.RUNNING


def test_a_cancel_while_running_frees_the_slot_when_the_worker_stops(r, make_job) -> None:
    store = JobStore(r, ahead=2)
    submit(store, make_job, "a0", max_parallel=1)
    submit(store, make_job, "a1", max_parallel=1)
    assert take(r, store) == "a0"
    assert store.cancel("a0") is JobStatus.RUNNING  # only flagged: it still runs
    assert held(r) == ["a1"] and listed(r) == []
    end(store, "a0", status="cancelled")  # its worker saw the flag and stopped
    assert listed(r) == ["a1"]


def test_a_job_past_its_deadline_frees_its_slot(r, make_job) -> None:
    """A job whose worker never ends it (hung, or its end was lost) holds its tenant's slot
    only until its deadline."""
    store = JobStore(r, ahead=2)
    short = dataclasses.replace(make_job("a0"), deadline=time.time() + 1.0)
    submit(store, make_job, "a0", job=short, max_parallel=1)
    submit(store, make_job, "a1", max_parallel=1)
    assert take(r, store) == "a0"
    store.release([Q])
    assert held(r) == ["a1"]
    time.sleep(1.2)
    store.release([Q])  # the reaper's pass
    assert listed(r) == ["a1"] and held(r) == []
    assert r.zrange(keys.running_key("A"), 0, -1) == ["a1"]


def test_a_job_cancelled_while_held_never_reaches_the_list(r, make_job) -> None:
    store = JobStore(r, ahead=1)
    for i in range(3):
        submit(store, make_job, f"a{i}")
    assert store.cancel("a1") is JobStatus.CANCELLED
    assert not r.hexists(keys.job_key("a1"), "message")  # nothing of it can be pushed
    assert drain(r, store) == ["a0", "a2"]
    assert store.record("a1").status is JobStatus.CANCELLED
    assert store.record("a1").started is None


def test_a_tenant_whose_held_jobs_are_all_cancelled_leaves_the_ring(r, make_job) -> None:
    store = JobStore(r, ahead=1)
    submit(store, make_job, "a0")
    submit(store, make_job, "c0", tenant="C")
    for i in range(3):
        submit(store, make_job, f"b{i}", tenant="B")
        store.cancel(f"b{i}")
    assert r.lrange(keys.ring_key(Q), 0, -1) == ["B", "C"]
    assert pop(r) == "a0"
    store.release([Q])  # B's first cancelled job is dropped on the way to C's
    assert listed(r) == ["c0"] and held(r, "B") == ["b1", "b2"]
    assert pop(r) == "c0"
    store.release([Q])  # and the rest of them: nothing is left to release
    assert listed(r) == []
    assert not r.exists(keys.held_key(Q, "B"), keys.ring_key(Q))


def test_lost_deliveries_never_republish_a_held_job(r, make_job) -> None:
    """stale.lua republishes a queued job whose message is gone from an empty list; a held
    job has no message out yet, and waits for its turn instead."""
    store, lv = JobStore(r, ahead=1), Liveness(r)
    for i in range(4):
        submit(store, make_job, f"a{i}")
    assert pop(r) == "a0"  # reserved by a worker that then died: its message is lost
    for i in range(4):  # all queued long ago
        r.zadd(keys.queued_key(Q), {f"a{i}": 1})
    assert lv.lost_deliveries([Q], older_than=60, job_ttl=60) == [Requeued("a0", Q, 1)]
    assert held(r) == ["a1", "a2", "a3"] and listed(r) == []
    for i in range(1, 4):
        assert r.hget(keys.job_key(f"a{i}"), "held") == "1"


def test_a_lost_orphan_frees_its_slot(r, make_job) -> None:
    """A synchronous job released and then lost with its API process is cancelled by
    stale.lua: its tenant's slot is free for the next job at the reaper's release."""
    store, lv = JobStore(r, ahead=1), Liveness(r)
    submit(store, make_job, "a0", owner="api-gone", max_parallel=1)
    submit(store, make_job, "a1", max_parallel=1)
    assert pop(r) == "a0"  # reserved by a worker that died; its API process died too
    r.zadd(keys.queued_key(Q), {"a0": 1})
    assert lv.lost_deliveries([Q], older_than=60, job_ttl=60) == []
    assert store.record("a0").status is JobStatus.CANCELLED
    assert r.zcard(keys.running_key("A")) == 0
    store.release([Q])
    assert listed(r) == ["a1"]


def test_release_moves_held_jobs_when_the_list_has_room(r, make_job) -> None:
    """JobStore.release (dispatch.lua, the reaper's pass) fills each named queue's list up
    to `ahead`, even when nothing else happens on the queue."""
    store = JobStore(r, ahead=2)
    for i in range(5):
        submit(store, make_job, f"a{i}")
    store.release([])  # nothing to do
    store.release([Q, "other"])
    assert listed(r) == ["a0", "a1"]  # full: nothing moved
    assert pop(r) == "a0" and pop(r) == "a1"  # reserved; lost with their worker
    store.release([Q, "other"])
    assert listed(r) == ["a2", "a3"] and held(r) == ["a4"]
    assert r.llen("other") == 0
    assert [store.record(f"a{i}").status for i in range(5)] == [JobStatus.QUEUED] * 5


def test_release_takes_ahead_from_its_store(r, make_job) -> None:
    small, big = JobStore(r, ahead=1), JobStore(r, ahead=3)
    for i in range(5):
        submit(small, make_job, f"a{i}")
    assert listed(r) == ["a0"]
    big.release([Q])
    assert listed(r) == ["a0", "a1", "a2"]


def test_idempotency_keys_are_scoped_per_tenant(r, make_job) -> None:
    store = JobStore(r, ahead=2)
    kw = {"idempotency_key": "k", "digest": "d1"}
    assert submit(store, make_job, "a", **kw) == "a"
    assert submit(store, make_job, "b", tenant="B", **kw) == "b"  # not A's job
    assert submit(store, make_job, "a2", **kw) == "a"  # A's own repeat
    assert submit(store, make_job, "b2", tenant="B", **kw) == "b"
    assert submit(store, make_job, "x", tenant=ANONYMOUS, **kw) == "x"
    with pytest.raises(IdempotencyConflict):
        submit(store, make_job, "b3", tenant="B", idempotency_key="k", digest="d2")
    assert not r.exists(keys.job_key("a2"), keys.job_key("b2"), keys.job_key("b3"))
    assert listed(r) == ["a", "b"] and held(r, ANONYMOUS) == ["x"]  # repeats pushed nothing


# -- each tenant's share of the queue limit -------------------------------------------------


def test_the_queue_limit_is_each_tenants_own(r, make_job) -> None:  # type: ignore[no-untyped-def]
    """One key's full share refuses its next job, never another key's."""
    store = JobStore(r, job_ttl=60)
    for i in range(3):
        submit(store, make_job, f"a{i}", limit=3)
    with pytest.raises(QueueFull):
        submit(store, make_job, "a3", limit=3)
    assert submit(store, make_job, "b0", tenant="B", limit=3) == "b0"
    assert (store.backlog(Q, "A"), store.backlog(Q, "B"), store.backlog(Q)) == (3, 1, 4)


def test_a_started_or_cancelled_job_leaves_its_tenants_share(r, make_job) -> None:  # type: ignore[no-untyped-def]
    store, lv = JobStore(r, job_ttl=60), Liveness(r)
    for i in range(3):
        submit(store, make_job, f"a{i}", limit=3)
    first = take(r, store)
    store.cancel("a2")
    assert store.backlog(Q, "A") == 1
    submit(store, make_job, "a3", limit=3)
    submit(store, make_job, "a4", limit=3)
    with pytest.raises(QueueFull):
        submit(store, make_job, "a5", limit=3)
    # the worker running the first dies: redelivered, it counts against the share again
    r.zadd(keys.WORKERS, {"w1": 0})
    assert [job.job_id for job in lv.reap()] == [first]
    assert store.backlog(Q, "A") == 4
