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
    assert set(r.zrange(keys.QUEUED, 0, -1)) == {"job_lost", "job_waiting"}
    assert lv.lost_deliveries(older_than=60) == []  # too young yet
    r.zadd(keys.QUEUED, {"job_lost": 1, "job_waiting": 1})  # queued long ago
    assert lv.lost_deliveries(older_than=60) == [Requeued("job_lost", "q-lost", 1)]
    assert lv.lost_deliveries(older_than=60) == []  # moved to the back: not every pass
    store.claim("job_lost", 1, "w2")  # the republished message arrives
    assert set(r.zrange(keys.QUEUED, 0, -1)) == {"job_waiting"}
