"""Job state transitions in Redis: each Lua script against a real Redis."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest

from tasks import keys
from tasks.events import StreamEvent, done_fields, token_fields
from tasks.jobs import IdempotencyConflict, JobStore, QueueFull
from tasks.keys import Event, JobStatus
from tasks.liveness import Liveness
from tasks.publisher import EventPublisher
from workers.protocol import ChatJob, Done, Usage


def events(r, job_id: str = "job_1") -> list[StreamEvent]:
    return [StreamEvent.decode(i, f) for i, f in r.xrange(keys.events_key(job_id))]


def finish(store: JobStore, job_id: str, attempt: int, worker: str, status: str) -> int:
    fields = {"type": "done", "finish_reason": "stop"}
    fields["usage"] = '{"prompt_tokens": 1, "completion_tokens": 1}'
    ttl60 = JobStore(store.redis, job_ttl=60, ahead=store.ahead)  # the TTL the tests expect
    k, args = ttl60.finish_call(job_id, attempt, worker, status, fields)
    return int(store.finish_script(keys=k, args=args))


def test_create_then_claim_returns_the_request(r, make_job) -> None:
    store = JobStore(r, job_ttl=60)
    job = make_job()
    assert store.create(job, "local-mps") == "job_1"
    rec = store.record("job_1")
    assert rec and rec.status is JobStatus.QUEUED and rec.queue == "local-mps"
    assert 0 < r.ttl(keys.job_key("job_1")) <= 120
    claim = store.claim("job_1", 1, "w1")
    assert claim.outcome == "ok" and claim.job == job
    assert claim.job.sampling.stop == ("x",)
    assert store.record("job_1").status is JobStatus.RUNNING
    assert r.smembers(keys.worker_jobs_key("w1")) == {"job_1"}


def test_second_delivery_of_a_running_attempt_is_a_duplicate(r, make_job) -> None:
    store = JobStore(r)
    store.create(make_job(), "q")
    assert store.claim("job_1", 1, "w1").outcome == "ok"
    assert store.claim("job_1", 1, "w2").outcome == "duplicate"
    assert store.claim("job_1", 2, "w2").outcome == "stale"
    assert store.claim("job_nope", 1, "w2").outcome == "missing"


def test_finished_job_drops_late_deliveries(r, make_job) -> None:
    store = JobStore(r)
    store.create(make_job(), "q")
    store.claim("job_1", 1, "w1")
    assert finish(store, "job_1", 1, "w1", "succeeded") == 1
    assert store.claim("job_1", 1, "w2").outcome == "finished"
    assert r.ttl(keys.job_key("job_1")) <= 60
    assert r.smembers(keys.worker_jobs_key("w1")) == set()


def test_cancel_while_queued_ends_the_job_and_the_claim_sees_it(r, make_job) -> None:
    store = JobStore(r)
    store.create(make_job(), "q")
    assert store.cancel("job_1") is JobStatus.CANCELLED
    assert [e.type for e in events(r)] == [Event.CANCELLED]
    assert store.claim("job_1", 1, "w1").outcome == "finished"
    assert store.cancel("job_1") is JobStatus.CANCELLED
    assert store.cancel("job_missing") is None


def test_cancel_while_running_flags_it_for_the_worker(r, make_job) -> None:
    store = JobStore(r)
    store.create(make_job(), "q")
    store.claim("job_1", 1, "w1")
    assert store.cancel("job_1") is JobStatus.RUNNING
    assert store.record("job_1").cancel_requested
    assert r.hget(keys.job_key("job_1"), "cancel") == "1"


def test_redelivered_attempt_writes_restart_and_fences_the_old_one(r, make_job) -> None:
    store = JobStore(r)
    store.create(make_job(), "q")
    first = store.claim("job_1", 1, "w1")
    r.xadd(keys.events_key("job_1"), token_fields(0, "old"), id=f"{first.token_base}-0")
    # the reaper's move: attempt 2, queued again
    r.hset(keys.job_key("job_1"), mapping={"attempt": "2", "status": "queued", "worker": ""})
    second = store.claim("job_1", 2, "w2")
    assert second.outcome == "ok" and second.token_base > first.token_base
    r.xadd(keys.events_key("job_1"), token_fields(0, "new"), id=f"{second.token_base}-0")
    with pytest.raises(Exception, match="equal or smaller"):  # the zombie's next token
        r.xadd(keys.events_key("job_1"), token_fields(1, "late"), id=f"{first.token_base}-1")
    assert finish(store, "job_1", 1, "w1", "succeeded") == 0  # the zombie cannot finish
    assert finish(store, "job_1", 2, "w2", "succeeded") == 1
    kinds = [e.type for e in events(r)]
    assert kinds == [Event.TOKEN, Event.RESTART, Event.TOKEN, Event.DONE]
    snap = store.snapshot("job_1")
    assert snap and snap[1].text == "new" and snap[1].restarts == 1


def test_claim_after_cancel_of_a_requeued_job_is_cancelled(r, make_job) -> None:
    store = JobStore(r)
    store.create(make_job(), "q")
    store.claim("job_1", 1, "w1")
    store.cancel("job_1")
    r.hset(keys.job_key("job_1"), mapping={"attempt": "2", "status": "queued", "worker": ""})
    assert store.claim("job_1", 2, "w2").outcome == "cancelled"
    assert store.record("job_1").status is JobStatus.CANCELLED


def test_idempotency_key_returns_the_first_job_or_conflicts(r, make_job) -> None:
    store = JobStore(r)
    assert store.create(make_job("job_a"), "q", idempotency_key="k", digest="d1") == "job_a"
    assert store.create(make_job("job_b"), "q", idempotency_key="k", digest="d1") == "job_a"
    assert not r.exists(keys.job_key("job_b"))
    with pytest.raises(IdempotencyConflict):
        store.create(make_job("job_c"), "q", idempotency_key="k", digest="d2")


def test_read_blocks_then_returns_new_events(r) -> None:
    store = JobStore(r)
    started = time.monotonic()
    assert store.read("job_1", "0-0", 200) == []
    assert time.monotonic() - started >= 0.19
    r.xadd(keys.events_key("job_1"), token_fields(0, "a"))
    got = store.read("job_1", "0-0", 200)
    assert [(e.type, e.delta) for e in got] == [(Event.TOKEN, "a")]
    assert store.read("job_1", got[-1].id, 50) == []


def test_the_backlog_counts_jobs_until_they_start(r, make_job) -> None:
    store = JobStore(r)
    assert store.backlog("q") == 0
    for i in range(3):
        store.create(make_job(f"job_{i}"), "q")
    assert store.backlog("q") == 3
    store.claim("job_0", 1, "w1")
    store.cancel("job_1")
    assert store.backlog("q") == 1


def test_the_lua_scripts_name_the_backlog_as_keys_does(r, make_job) -> None:
    """claim, cancel and reap build the backlog's key in Lua from the job's queue."""
    store = JobStore(r)
    store.create(make_job("job_a"), "q:odd-name")
    store.create(make_job("job_b"), "q:odd-name")
    assert r.zcard(keys.queued_key("q:odd-name")) == 2
    store.claim("job_a", 1, "w1")
    store.cancel("job_b")
    assert r.zcard(keys.queued_key("q:odd-name")) == 0


def test_a_full_queue_refuses_new_jobs_exactly(r, make_job) -> None:
    store = JobStore(r)
    for i in range(2):
        store.create(make_job(f"job_{i}"), "q", limit=2)
    with pytest.raises(QueueFull) as full:
        store.create(make_job("job_2"), "q", limit=2, message=b"m")
    assert full.value.waiting == 2
    assert store.record("job_2") is None and r.llen("q") == 0  # nothing of it was written
    store.claim("job_0", 1, "w1")  # one starts: room for one more
    assert store.create(make_job("job_2"), "q", limit=2) == "job_2"


def test_a_synchronous_job_whose_api_died_is_dropped_at_claim(r, make_job) -> None:
    store, lv = JobStore(r), Liveness(r)
    lv.api_beat("api-1", 60)
    store.create(make_job("job_live"), "q", owner="api-1")
    store.create(make_job("job_orphan"), "q", owner="api-gone")  # never announced
    store.create(make_job("job_durable"), "q")
    assert store.claim("job_live", 1, "w1").outcome == "ok"
    assert store.claim("job_orphan", 1, "w1").outcome == "orphaned"
    assert store.record("job_orphan").status is JobStatus.CANCELLED
    assert [e.type for e in events(r, "job_orphan")] == [Event.CANCELLED]
    assert store.claim("job_durable", 1, "w1").outcome == "ok"


def test_a_worker_learns_which_running_jobs_to_stop(r, make_job) -> None:
    store, lv = JobStore(r), Liveness(r)
    lv.api_beat("api-1", 60)
    for job_id in ("job_a", "job_b", "job_c", "job_d"):
        store.create(make_job(job_id), "q", owner="api-1" if job_id != "job_c" else None)
        store.claim(job_id, 1, "w1")
    running = ["job_a", "job_b", "job_c", "job_d"]
    assert store.stops("w1", running) == []
    store.cancel("job_d")  # DELETE, or the client hung up
    assert store.stops("w1", running) == ["job_d"]
    lv.api_beat("api-1", 0)  # the API process holding a and b said goodbye
    assert sorted(store.stops("w1", running)) == ["job_a", "job_b", "job_d"]
    assert store.record("job_a").cancel_requested and not store.record("job_c").cancel_requested
    assert store.stops("w2", ["job_c"]) == ["job_c"]  # not w2's attempt: stop it


# -- what an ended job keeps in Redis ------------------------------------------------------

MIB = 1 << 20


def with_body(job: ChatJob, size: int) -> ChatJob:
    """`job` with a user message of `size` bytes: a large request body."""
    return dataclasses.replace(job, messages=[{"role": "user", "content": "x" * size}])


def requeue(r, job_id: str, attempt: int) -> None:
    """The reaper's move: the job queued again as `attempt` (its worker died)."""
    r.hset(keys.job_key(job_id), mapping={"attempt": str(attempt), "status": "queued"})


def end_by_finish(r, store: JobStore, lv: Liveness) -> None:
    store.claim("job_1", 1, "w1")
    assert finish(store, "job_1", 1, "w1", "succeeded") == 1


def end_by_cancel_while_queued(r, store: JobStore, lv: Liveness) -> None:
    assert store.cancel("job_1") is JobStatus.CANCELLED


def end_by_claim_after_cancel(r, store: JobStore, lv: Liveness) -> None:
    store.claim("job_1", 1, "w1")
    assert store.cancel("job_1") is JobStatus.RUNNING  # flagged; then its worker dies
    requeue(r, "job_1", 2)
    assert store.claim("job_1", 2, "w2").outcome == "cancelled"


def end_by_claim_of_an_orphan(r, store: JobStore, lv: Liveness) -> None:
    r.hset(keys.job_key("job_1"), "owner", "api-gone")  # an API process that never beat
    assert store.claim("job_1", 1, "w1").outcome == "orphaned"


def end_as_a_lost_orphan(r, store: JobStore, lv: Liveness, job_id: str = "job_1") -> None:
    r.hset(keys.job_key(job_id), "owner", "api-gone")
    r.zadd(keys.queued_key("q"), {job_id: 1})  # queued long ago, its message lost
    assert lv.lost_deliveries(["q"], older_than=60, job_ttl=60) == []


ENDINGS: dict[str, Callable[..., None]] = {
    "finish.lua": end_by_finish,
    "cancel.lua, queued": end_by_cancel_while_queued,
    "claim.lua, cancelled": end_by_claim_after_cancel,
    "claim.lua, orphaned": end_by_claim_of_an_orphan,
    "stale.lua, orphaned": end_as_a_lost_orphan,
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_a_job_that_ends_keeps_no_request_body(r, make_job, ending: str) -> None:
    """Every script that ends a job drops the request: nothing reads it after the end, and
    it would otherwise stay for the job's whole TTL (an hour by default)."""
    store, lv = JobStore(r, job_ttl=60), Liveness(r)
    store.create(with_body(make_job(), MIB), "q")
    job = keys.job_key("job_1")
    assert r.memory_usage(job, samples=0) > MIB
    ENDINGS[ending](r, store, lv)
    rec = store.record("job_1")
    assert rec is not None and rec.status.terminal and rec.finished and rec.model == "m"
    assert not r.hexists(job, "request")
    assert r.memory_usage(job, samples=0) < 4096
    assert 0 < r.ttl(job) <= 60 and 0 < r.ttl(keys.events_key("job_1")) <= 60


def test_a_running_job_keeps_its_request_until_it_ends(r, make_job) -> None:
    """A cancel of a running job only flags it: the hash keeps what its worker may still
    need until the worker (or the claim after a redelivery) ends it."""
    store = JobStore(r)
    store.create(make_job(), "q")
    store.claim("job_1", 1, "w1")
    assert store.cancel("job_1") is JobStatus.RUNNING
    assert r.hexists(keys.job_key("job_1"), "request")


def test_posted_then_cancelled_large_bodies_are_not_kept(r, make_job) -> None:
    """Ten POST-then-DELETE rounds of an 8 MiB body left 80 MiB in Redis for an hour."""
    store = JobStore(r)
    for i in range(10):
        job_id = f"job_{i}"
        store.create(with_body(make_job(job_id), 8 * MIB), "q")
        assert store.cancel(job_id) is JobStatus.CANCELLED
    kept = sum(r.memory_usage(k, samples=0) or 0 for k in r.scan_iter("router:job:*"))
    assert kept < 64 * 1024, f"{kept / MIB:.1f} MiB kept by 10 cancelled jobs"


def test_a_restart_event_expires_with_its_job(r, make_job) -> None:
    """A redelivered job whose first attempt wrote nothing gets its stream from the restart
    event: that stream expires with the job hash, even if no attempt ever finishes."""
    store = JobStore(r, job_ttl=60)
    store.create(make_job(), "q")
    store.claim("job_1", 1, "w1")  # its worker dies before the first token
    requeue(r, "job_1", 2)
    assert store.claim("job_1", 2, "w2").outcome == "ok"
    assert [e.type for e in events(r)] == [Event.RESTART]
    left = r.pttl(keys.job_key("job_1"))
    assert 0 < r.pttl(keys.events_key("job_1")) <= left


def test_every_job_key_expires_whatever_happened_to_the_job(r, make_job) -> None:
    """The invariant behind the tests above: after any mix of tokens, restarts, cancels and
    ends, no key of any job is left without a TTL."""
    store, lv = JobStore(r, job_ttl=60), Liveness(r)
    publisher = EventPublisher(r)
    lifetime = 120
    for job_id in ("job_done", "job_twice", "job_gone", "job_queued", "job_dropped"):
        store.create(make_job(job_id), "q")
    # tokens as a worker writes them: the first one of an attempt sets the stream's TTL
    first = store.claim("job_done", 1, "w1")
    for seq, text in enumerate(("a", "b")):
        expire = lifetime if seq == 0 else 0
        publisher.token("job_done", f"{first.token_base}-{seq}", token_fields(seq, text), expire)
    done = done_fields(Done("stop", Usage(1, 2)))
    k, args = store.finish_call("job_done", 1, "w1", "succeeded", done)
    assert publisher.finish("job_done", k, args, timeout=10)
    # redelivered twice, dying before any token each time; still running at the end
    store.claim("job_twice", 1, "w1")
    for attempt in (2, 3):
        requeue(r, "job_twice", attempt)
        assert store.claim("job_twice", attempt, f"w{attempt}").outcome == "ok"
    # redelivered, then cancelled while running, then redelivered again
    store.claim("job_gone", 1, "w1")
    requeue(r, "job_gone", 2)
    store.claim("job_gone", 2, "w2")
    store.cancel("job_gone")
    requeue(r, "job_gone", 3)
    assert store.claim("job_gone", 3, "w3").outcome == "cancelled"
    store.cancel("job_queued")
    end_as_a_lost_orphan(r, store, lv, "job_dropped")
    found = list(r.scan_iter("router:job:*"))
    assert len(found) == 10  # five hashes, five streams
    assert {k: r.ttl(k) for k in found if r.ttl(k) <= 0} == {}


def test_every_answer_of_claim_lua_is_a_claim_outcome() -> None:
    import re

    from tasks.jobs import ClaimOutcome, lua

    said = set(re.findall(r"return \{'(\w+)'|reason = '(\w+)'", lua("claim")))
    answers = {a or b for a, b in said}
    assert answers == {o.value for o in ClaimOutcome}
