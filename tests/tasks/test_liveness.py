"""Heartbeats, live counts and the reaper, against a real Redis and its clock."""

from __future__ import annotations

import time

from tasks import keys
from tasks.jobs import JobStore
from tasks.keys import JobStatus
from tasks.liveness import Liveness, Requeued


def test_live_counts_follow_heartbeats_and_goodbye(r) -> None:
    lv = Liveness(r)
    assert lv.live_counts(["a", "b"]) == {"a": 0, "b": 0}
    lv.beat("w1", 0.5, ["a", "b"], ["m1"], {"pid": "1"})
    lv.beat("w2", 5, ["a"], ["m1", "m2"], {"pid": "2"})
    assert lv.live_counts(["a", "b"]) == {"a": 2, "b": 1}
    pairs = [("a", "m1"), ("a", "m2"), ("b", "m1"), ("b", "m2")]
    assert lv.live_model_counts(pairs) == {
        ("a", "m1"): 2,
        ("a", "m2"): 1,
        ("b", "m1"): 1,
        ("b", "m2"): 0,
    }
    time.sleep(0.6)
    assert lv.live_counts(["a", "b"]) == {"a": 1, "b": 0}
    assert lv.live_model_counts([("a", "m1"), ("b", "m1")]) == {("a", "m1"): 1, ("b", "m1"): 0}
    lv.goodbye("w2", ["a"], ["m1", "m2"])
    assert lv.live_counts(["a"]) == {"a": 0}
    assert lv.live_model_counts([("a", "m2")]) == {("a", "m2"): 0}
    ids = {w["id"]: w for w in lv.workers()}
    assert ids["w1"]["pid"] == "1" and ids["w1"]["queues"] == "a,b" and ids["w1"]["models"] == "m1"


def test_reaper_requeues_only_the_dead_workers_running_jobs(r, make_job) -> None:
    store, lv = JobStore(r), Liveness(r)
    for job_id in ("job_dead", "job_alive", "job_done"):
        store.create(make_job(job_id), "q")
    lv.beat("dead", 0.2, ["q"], ["m"], {})
    lv.beat("alive", 30, ["q"], [], {})
    store.claim("job_dead", 1, "dead")
    store.claim("job_done", 1, "dead")
    r.hset(keys.job_key("job_done"), "status", "succeeded")
    store.claim("job_alive", 1, "alive")
    assert lv.reap() == []  # nobody expired yet
    time.sleep(0.3)
    assert lv.reap() == [Requeued("job_dead", "q", 2)]
    rec = store.record("job_dead")
    assert rec and rec.status is JobStatus.QUEUED and rec.attempt == 2 and rec.worker == ""
    assert store.record("job_alive").status is JobStatus.RUNNING
    assert not r.exists(keys.worker_key("dead"), keys.worker_jobs_key("dead"))
    assert r.zscore(keys.model_workers_key("q", "m"), "dead") is None
    assert lv.reap() == []  # forgotten after one pass
    assert store.claim("job_dead", 2, "alive").outcome == "ok"


def test_reaper_lock_lets_one_pass_through(r) -> None:
    lv = Liveness(r)
    assert lv.try_lock("a", 1.0)
    assert not lv.try_lock("b", 1.0)


def test_a_queued_job_whose_message_is_gone_is_found_again(r, make_job) -> None:  # type: ignore[no-untyped-def]
    store, lv = JobStore(r, job_ttl=60), Liveness(r)
    for job_id in ("job_lost", "job_waiting", "job_taken", "job_cancelled"):
        store.create(make_job(job_id), "q-lost" if job_id != "job_waiting" else "q-busy")
    r.rpush("q-busy", "a message still in line")
    store.claim("job_taken", 1, "w1")
    store.cancel("job_cancelled")
    lost, busy = keys.queued_key("q-lost"), keys.queued_key("q-busy")
    assert set(r.zrange(lost, 0, -1)) == {"job_lost"}
    assert set(r.zrange(busy, 0, -1)) == {"job_waiting"}
    queues = ["q-lost", "q-busy"]
    assert lv.lost_deliveries(queues, older_than=60, job_ttl=60) == []  # too young yet
    r.zadd(lost, {"job_lost": 1})  # queued long ago
    r.zadd(busy, {"job_waiting": 1})
    assert lv.lost_deliveries(["q-busy"], 60, 60) == []  # its message still waits in line
    assert lv.lost_deliveries(queues, 60, 60) == [Requeued("job_lost", "q-lost", 1)]
    assert lv.lost_deliveries(queues, 60, 60) == []  # moved to the back: not every pass
    store.claim("job_lost", 1, "w2")  # the republished message arrives
    assert r.zcard(lost) == 0 and set(r.zrange(busy, 0, -1)) == {"job_waiting"}


def test_a_lost_synchronous_job_of_a_dead_api_is_cancelled_not_published(r, make_job) -> None:  # type: ignore[no-untyped-def]
    store, lv = JobStore(r, job_ttl=60), Liveness(r)
    lv.api_beat("api-live", 60)
    lv.api_beat("api-gone", 60)
    lv.api_beat("api-gone", 0)  # said goodbye
    store.create(make_job("job_sync_live"), "q", owner="api-live")
    store.create(make_job("job_sync_gone"), "q", owner="api-gone")
    store.create(make_job("job_durable"), "q")  # POST /v1/jobs: no owner
    r.zadd(keys.queued_key("q"), {"job_sync_live": 1, "job_sync_gone": 1, "job_durable": 1})
    found = lv.lost_deliveries(["q"], older_than=60, job_ttl=60)
    assert sorted(j.job_id for j in found) == ["job_durable", "job_sync_live"]
    assert store.record("job_sync_gone").status is JobStatus.CANCELLED
    assert r.zscore(keys.queued_key("q"), "job_sync_gone") is None
