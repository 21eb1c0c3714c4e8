"""Group commit of stream events against a real Redis."""

from __future__ import annotations

import threading
import time

from tasks import keys
from tasks.events import token_fields
from tasks.publisher import EventPublisher


class CountingPublisher(EventPublisher):
    """Counts pipelines (round trips) and the events each carried."""

    def __init__(self, client) -> None:  # type: ignore[no-untyped-def]
        super().__init__(client)
        self.batches: list[int] = []

    def _flush(self, batch, retrying):  # type: ignore[no-untyped-def]
        self.batches.append(len(batch))
        super()._flush(batch, retrying)


def wait_for_len(r, job_id: str, n: int, timeout: float = 5.0) -> None:
    give_up = time.monotonic() + timeout
    while r.xlen(keys.events_key(job_id)) < n:
        assert time.monotonic() < give_up, f"only {r.xlen(keys.events_key(job_id))} of {n}"
        time.sleep(0.01)


def test_tokens_land_in_order_per_job_from_many_threads(r) -> None:
    pub = EventPublisher(r)

    def produce(job_id: str) -> None:
        for seq in range(200):
            pub.token(job_id, f"1000-{seq + 1}", token_fields(seq, f"{seq} "), 60)

    threads = [threading.Thread(target=produce, args=(f"j{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        wait_for_len(r, f"j{i}", 200)
        seqs = [int(f["seq"]) for _, f in r.xrange(keys.events_key(f"j{i}"))]
        assert seqs == list(range(200))
        assert 0 < r.ttl(keys.events_key(f"j{i}")) <= 60


def test_tokens_queued_behind_a_slow_round_trip_share_one_pipeline(r) -> None:
    pub = CountingPublisher(r)
    pub.token("j", "1000-1", token_fields(0, "a"), 0)
    wait_for_len(r, "j", 1)
    r.client_pause(300)  # Redis stalls: the next pipeline waits, tokens pile up behind it
    pub.token("j", "1000-2", token_fields(1, "b"), 0)
    time.sleep(0.05)
    for seq in range(2, 100):
        pub.token("j", f"1000-{seq + 1}", token_fields(seq, "c"), 0)
    wait_for_len(r, "j", 100)
    assert sum(pub.batches) == 100
    assert len(pub.batches) <= 4  # per-token round trips would be 100
    assert max(pub.batches) >= 90


def test_cancel_flag_is_read_back_with_the_tokens(r) -> None:
    pub = EventPublisher(r)
    r.hset(keys.job_key("j"), mapping={"status": "running", "cancel": "0"})
    pub.token("j", "1000-1", token_fields(0, "a"), 0)
    wait_for_len(r, "j", 1)
    time.sleep(0.05)
    assert not pub.should_stop("j")
    r.hset(keys.job_key("j"), "cancel", "1")
    pub.token("j", "1000-2", token_fields(1, "b"), 0)
    give_up = time.monotonic() + 2
    while not pub.should_stop("j"):
        assert time.monotonic() < give_up
        time.sleep(0.01)
    pub.forget("j")
    assert not pub.should_stop("j")


def test_a_superseded_attempt_learns_it_from_its_rejected_token(r) -> None:
    pub = EventPublisher(r)
    r.xadd(keys.events_key("j"), {"type": "restart", "attempt": "2"}, id="5000-0")
    pub.token("j", "1000-1", token_fields(0, "late"), 0)
    give_up = time.monotonic() + 2
    while not pub.should_stop("j"):
        assert time.monotonic() < give_up
        time.sleep(0.01)
    assert r.xlen(keys.events_key("j")) == 1
