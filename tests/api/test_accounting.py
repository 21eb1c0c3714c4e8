"""Accounting in one API process, on a real Redis: a completion is recorded once, with its
usage and cost, whether its request reads the job to the end, stops early, reads nothing,
or dies and leaves it to another process; and never twice, however its ledger entry is
raced for. Events are written to real job streams, as a worker writes them."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from api import metrics as api_metrics
from api.accountant import Accountant
from api.accounting import Completion
from api.ledger import Entry, Ledger
from api.metrics import render
from api.serving import Started, Submitted
from registry.queries import DeploymentInfo, ModelRoute
from registry.requestlog import LogEntry
from tasks.connections import redis_client
from tasks.events import (
    StreamEvent,
    cancelled_fields,
    done_fields,
    error_fields,
    token_fields,
)
from tasks.jobs import IdempotencyConflict
from tasks.keys import LEDGER_OWNERS as OWNERS
from tasks.keys import events_key, ledger_key
from tasks.liveness import Liveness
from tests.api.test_metrics import value
from workers.errors import ConflictError, GatewayTimeoutError, ModelNotFoundError
from workers.protocol import Done, ErrorInfo, Usage

DB = 6  # a database of the session's redis-server of its own, flushed for each test


class Sink:
    """A request-log writer that keeps what it is given."""

    def __init__(self, fail: bool = False) -> None:
        self.entries: list[LogEntry] = []
        self.fail = fail

    def submit(self, entry: LogEntry) -> bool:
        if self.fail:
            raise RuntimeError("sink broken")
        self.entries.append(entry)
        return True


@pytest.fixture
def r(stack: Any) -> redis.Redis:
    client = redis_client(stack.redis_url.rsplit("/", 1)[0] + f"/{DB}")
    client.flushdb()
    return client


@pytest.fixture
def make_accountant(r: redis.Redis) -> Iterator[Callable[..., Accountant]]:
    """Accountants for API processes alive in Redis (`alive=False`: gone), stopped after."""
    made: list[Accountant] = []

    def make(
        sink: Sink | None = None, owner: str = "", alive: bool = True, grace: float = 30.0
    ) -> Accountant:
        owner = owner or f"api-test-{uuid.uuid4().hex[:6]}"
        Liveness(r).api_beat(owner, 600 if alive else 0)
        acct = Accountant(r, lambda: owner, sink, grace=grace, adopt_interval=0.2)
        made.append(acct)
        return acct

    yield make
    for acct in made:
        acct.close()


def eventually(check: Callable[[], object], timeout: float = 5.0) -> None:
    give_up = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < give_up, "timed out"
        time.sleep(0.02)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def deployment(model_id: str, backend: str = "bk") -> DeploymentInfo:
    return DeploymentInfo(backend, "local", "q", model_id, None, None, enabled=True)


def route(model_id: str, input_price: float = 1.0, output_price: float = 2.0) -> ModelRoute:
    return ModelRoute(
        id=model_id,
        context_window=1000,
        max_tokens=100,
        input_price=input_price,
        output_price=output_price,
        aliases=(),
        created=0,
        deployments=(deployment(model_id),),
    )


def submitted(
    model_id: str, backend: str = "bk", deadline: float = 60.0, replayed: bool = False
) -> Submitted:
    job = f"job_{uuid.uuid4().hex[:24]}"
    dep = deployment(model_id, backend)
    return Submitted(
        job, route(model_id), dep, int(time.time()), time.time() + deadline, replayed=replayed
    )


class Worker:
    """Writes a job's events to its real stream, as a worker does."""

    def __init__(self, r: redis.Redis, job_id: str) -> None:
        self.r, self.key, self.seq = r, events_key(job_id), 0

    def _add(self, fields: dict[str, str]) -> StreamEvent:
        entry_id = str(self.r.xadd(self.key, fields))  # type: ignore[arg-type]
        return StreamEvent.decode(entry_id, fields)

    def token(self) -> StreamEvent:
        self.seq += 1
        return self._add(token_fields(self.seq - 1, "x"))

    def done(self, prompt: int, completion: int) -> StreamEvent:
        return self._add(done_fields(Done("stop", Usage(prompt, completion))))

    def error(self, status: int) -> StreamEvent:
        return self._add(error_fields(ErrorInfo("upstream failed", status=status)))

    def cancelled(self) -> StreamEvent:
        return self._add(cancelled_fields())


def ledger(r: redis.Redis, acct: Accountant) -> dict[str, str]:
    found: dict[str, str] = r.hgetall(ledger_key(acct.owner()))  # type: ignore[assignment]
    return found


@pytest.fixture
def default_mode() -> None:
    if api_metrics.multiproc_dir(os.environ):
        pytest.skip("PROMETHEUS_MULTIPROC_DIR is set: this process is in multiprocess mode")


# -- a request that reads its job ---------------------------------------------------------


@pytest.mark.usefixtures("default_mode")
def test_a_completion_read_to_its_end_is_recorded_once(r, make_accountant) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    acct = make_accountant(sink)
    asked = unique("asked")
    c = acct.begin(asked, request_id="req-1")
    sub = submitted("answering-model", backend="bk2")
    c.submitted(sub)
    assert set(ledger(r, acct)) == {sub.job_id}  # owed before the client hears of the job
    worker = Worker(r, sub.job_id)
    time.sleep(0.02)
    events = [None, worker.token(), worker.token(), worker.done(1000, 500)]
    assert list(c.events(events)) == events
    c.finish("500")  # too late: already recorded
    eventually(lambda: sink.entries)
    [entry] = sink.entries
    assert (entry.status, entry.model, entry.backend, entry.job_id) == (
        "200",
        asked,
        "bk2",
        sub.job_id,
    )
    assert (entry.prompt_tokens, entry.completion_tokens) == (1000, 500)
    assert entry.cost_usd == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)
    assert entry.fallback == "answering-model" and entry.request_id == "req-1"
    assert entry.ttft_ms is not None and 20 <= entry.ttft_ms <= entry.latency_ms
    assert ledger(r, acct) == {}  # paid
    text = render(None, None)[0]
    assert value(text, "router_requests_total", model=asked, backend="bk2", status="200") == 1
    assert value(text, "router_fallbacks_total", model=asked, fallback="answering-model") == 1
    assert value(text, "router_completion_tokens_total", model=asked) == 500
    time.sleep(0.3)
    assert len(sink.entries) == 1 and acct.recorded == 1


def test_an_error_event_keeps_its_status(r, make_accountant) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    c = make_accountant(sink).begin("m")
    sub = submitted("m")
    c.submitted(sub)
    list(c.events([Worker(r, sub.job_id).error(502)]))
    eventually(lambda: sink.entries)
    assert [e.status for e in sink.entries] == ["502"]


def test_a_reader_that_leaves_is_recorded_when_its_job_ends(r, make_accountant) -> None:  # type: ignore[no-untyped-def]
    """The client went away after one token: recorded 499 once the job's end is seen, with
    the tokens that end reports (here the job finished before the cancel reached it)."""
    sink = Sink()
    acct = make_accountant(sink)
    c = acct.begin("m")
    sub = submitted("m")
    c.submitted(sub)
    worker = Worker(r, sub.job_id)
    stream = c.events(iter([worker.token(), worker.token()]))
    next(stream)
    stream.close()  # the client went away
    time.sleep(0.3)
    assert sink.entries == [] and sub.job_id in ledger(r, acct)  # not before the job ends
    worker.token()
    worker.done(7, 3)
    eventually(lambda: sink.entries)
    [entry] = sink.entries
    assert (entry.status, entry.prompt_tokens, entry.completion_tokens) == ("499", 7, 3)
    assert entry.ttft_ms is not None and entry.fallback is None
    assert ledger(r, acct) == {}


def test_a_failed_read_keeps_the_status_the_client_got(r, make_accountant) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    c = make_accountant(sink).begin("m")
    sub = submitted("m")
    c.submitted(sub)
    worker = Worker(r, sub.job_id)

    def timing_out() -> Iterator[StreamEvent | None]:
        yield worker.token()
        raise GatewayTimeoutError("too slow")

    with pytest.raises(GatewayTimeoutError):
        list(c.events(timing_out()))
    worker.cancelled()  # the cancel that followed the timeout
    eventually(lambda: sink.entries)
    assert [(e.status, e.ttft_ms is not None) for e in sink.entries] == [("504", True)]


# -- ChatService.start and submit, accounted ----------------------------------------------


class Service:
    """ChatService's contract: `start` tells `on_submit` of each job it submits (a fallback
    after the first) and returns a Started or raises; `submit` returns a Submitted or
    raises."""

    def __init__(self, result: Started | Submitted | Exception, subs: list[Submitted]) -> None:
        self.result, self.subs = result, subs

    def start(self, req: Any, headers: Any = None, client: Any = None, on_submit: Any = None):  # type: ignore[no-untyped-def]
        for sub in self.subs:
            on_submit(sub)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    def submit(self, req: Any, **kwargs: Any) -> Any:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_start_records_a_refusal_before_any_job(make_accountant) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    acct = make_accountant(sink)
    with pytest.raises(ModelNotFoundError):
        acct.begin("unknown").start(Service(ModelNotFoundError("no such model"), []), req=None)  # type: ignore[arg-type]
    [entry] = sink.entries  # at once: no job, nothing to wait for
    assert (entry.status, entry.backend, entry.job_id, entry.ttft_ms) == ("404", "none", None, None)


def test_start_records_the_last_job_tried_when_none_answered(r, make_accountant) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    acct = make_accountant(sink)
    first, second = submitted("m"), submitted("other", backend="bk2")
    service = Service(ConflictError("cancelled", code="job_cancelled"), [first, second])
    with pytest.raises(ConflictError):
        acct.begin("m").start(service, req=None)  # type: ignore[arg-type]
    eventually(lambda: sink.entries)
    [entry] = sink.entries  # the client hung up before its first token
    assert (entry.status, entry.job_id, entry.backend) == ("499", second.job_id, "bk2")
    eventually(lambda: ledger(r, acct) == {})  # the superseded job left without a record


def test_start_after_a_fallback_records_the_answering_job(r, make_accountant) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    acct = make_accountant(sink)
    failed, answering = submitted("m"), submitted("fallback-model", backend="bk2")
    worker = Worker(r, answering.job_id)
    head = [worker.token()]
    rest = iter([worker.token(), None, worker.done(3, 2)])
    c = acct.begin("m")
    started = c.start(Service(Started(answering, head, rest), [failed, answering]), req=None)  # type: ignore[arg-type]
    assert c.ttft is not None and not sink.entries  # first token seen, not finished yet
    assert set(ledger(r, acct)) <= {failed.job_id, answering.job_id}
    assert [e.type.value for e in started.rest if e is not None] == ["token", "done"]
    eventually(lambda: sink.entries)
    [entry] = sink.entries
    assert (entry.status, entry.job_id, entry.fallback) == (
        "200",
        answering.job_id,
        "fallback-model",
    )
    assert (entry.prompt_tokens, entry.completion_tokens) == (3, 2)
    assert entry.cost_usd == pytest.approx((3 * 1.0 + 2 * 2.0) / 1e6)
    eventually(lambda: ledger(r, acct) == {})


def test_submit_records_refusals_and_leaves_replays_to_their_first_request(
    r, make_accountant
) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    acct = make_accountant(sink)
    with pytest.raises(IdempotencyConflict):
        acct.begin("m").submit(Service(IdempotencyConflict("job_x"), []), req=None)  # type: ignore[arg-type]
    assert [e.status for e in sink.entries] == ["409"]
    replay = acct.begin("m")
    replay.submit(Service(submitted("m", replayed=True), []), req=None)  # type: ignore[arg-type]
    replay.follow()
    time.sleep(0.3)
    assert ledger(r, acct) == {} and len(sink.entries) == 1


def test_recording_never_fails_the_request(r, make_accountant) -> None:  # type: ignore[no-untyped-def]
    acct = make_accountant(Sink(fail=True))
    c = acct.begin("m")
    sub = submitted("m")
    c.submitted(sub)
    worker = Worker(r, sub.job_id)
    assert len(list(c.events([worker.token(), worker.done(1, 1)]))) == 2  # the error is logged
    eventually(lambda: acct.recorded == 1)  # the metrics got it all the same


# -- jobs nobody here reads ---------------------------------------------------------------


def test_a_job_nobody_reads_is_recorded_when_it_ends(r, make_accountant) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    acct = make_accountant(sink)
    c = acct.begin("m", request_id="req-durable")
    sub = submitted("m")
    c.submitted(sub)
    c.follow()
    worker = Worker(r, sub.job_id)
    time.sleep(0.3)
    worker.token()
    worker.token()
    time.sleep(0.2)
    assert sink.entries == []
    worker.done(11, 2)
    eventually(lambda: sink.entries)
    [entry] = sink.entries
    assert (entry.status, entry.request_id, entry.prompt_tokens, entry.completion_tokens) == (
        "200",
        "req-durable",
        11,
        2,
    )
    assert entry.ttft_ms is not None and 250 <= entry.ttft_ms <= entry.latency_ms
    assert ledger(r, acct) == {}


def test_a_job_that_never_ends_is_recorded_timed_out_after_its_grace(r, make_accountant) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    acct = make_accountant(sink, grace=0.3)
    c = acct.begin("m")
    sub = submitted("m", deadline=0.2)
    c.submitted(sub)
    c.follow()
    eventually(lambda: sink.entries, timeout=3)
    [entry] = sink.entries
    assert (entry.status, entry.completion_tokens, entry.job_id) == ("504", 0, sub.job_id)
    assert ledger(r, acct) == {}


def test_close_records_what_has_ended(r, make_accountant) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    acct = make_accountant(sink)
    c = acct.begin("m")
    sub = submitted("m")
    c.submitted(sub)
    list(c.events([Worker(r, sub.job_id).done(1, 1)]))
    acct.close()
    assert [e.status for e in sink.entries] == ["200"] and not acct.running()


# -- a process that is gone, and races ----------------------------------------------------


def owed(r: redis.Redis, owner: str, sub: Submitted, requested: str = "m") -> None:
    """`owner` owes the record of `sub`, as its Accountant writes it."""
    started = time.time() - 1
    entry = Entry(
        job_id=sub.job_id,
        requested=requested,
        request_id=f"req-{sub.job_id}",
        key_name=None,
        started_at=started,
        model=sub.route.id,
        backend=sub.deployment.backend,
        input_price=1.0,
        output_price=2.0,
        deadline=sub.deadline,
    )
    Ledger(r).open(owner, entry)


def test_the_jobs_of_a_process_that_is_gone_are_recorded_once_by_another(
    r, make_accountant
) -> None:  # type: ignore[no-untyped-def]
    gone, alive = unique("api-gone"), unique("api-alive")
    Liveness(r).api_beat(gone, 0)  # said goodbye (or its beats lapsed)
    Liveness(r).api_beat(alive, 600)
    ended, running, theirs = submitted("m"), submitted("m"), submitted("m")
    owed(r, gone, ended)
    owed(r, gone, running)
    owed(r, alive, theirs)  # a live process's debts stay its own
    Worker(r, ended.job_id).token()
    Worker(r, ended.job_id).done(5, 4)  # it ended before anyone adopted it
    sinks = [Sink(), Sink()]
    adopters = [make_accountant(s) for s in sinks]  # two processes race to adopt
    for acct in adopters:
        acct.start()
    eventually(lambda: sum(len(s.entries) for s in sinks) == 1)
    [entry] = [e for s in sinks for e in s.entries]
    assert (entry.job_id, entry.status, entry.prompt_tokens, entry.completion_tokens) == (
        ended.job_id,
        "200",
        5,
        4,
    )
    assert entry.ttft_ms is None  # not watched live: its first token's time is unknown
    assert 900 <= entry.latency_ms < 60_000  # from the request's start to the job's end
    assert entry.cost_usd == pytest.approx((5 * 1.0 + 4 * 2.0) / 1e6)
    Worker(r, running.job_id).cancelled()  # the other job ends later: followed, recorded
    eventually(lambda: sum(len(s.entries) for s in sinks) == 2)
    time.sleep(0.5)
    records = sorted((e.job_id, e.status) for s in sinks for e in s.entries)
    assert records == sorted([(ended.job_id, "200"), (running.job_id, "499")])
    assert r.hgetall(ledger_key(gone)) == {} and gone not in r.smembers(OWNERS)  # type: ignore[operator]
    assert set(r.hgetall(ledger_key(alive))) == {theirs.job_id}  # type: ignore[arg-type]


def test_a_process_taken_for_gone_does_not_record_what_was_adopted(r, make_accountant) -> None:  # type: ignore[no-untyped-def]
    """Its beats lapsed while it still read the job: the adopter records, it does not."""
    mine, theirs = Sink(), Sink()
    slow = make_accountant(mine)
    c = slow.begin("m")
    sub = submitted("m")
    c.submitted(sub)
    Liveness(r).api_beat(slow.owner(), 0)
    adopter = make_accountant(theirs)
    adopter.start()
    eventually(lambda: sub.job_id in ledger(r, adopter))
    worker = Worker(r, sub.job_id)
    list(c.events([worker.token(), worker.done(2, 2)]))  # the slow one reads it to the end
    eventually(lambda: theirs.entries)
    time.sleep(0.5)
    assert mine.entries == [] and [e.status for e in theirs.entries] == ["200"]


def test_an_unreadable_ledger_entry_is_dropped(r, make_accountant) -> None:  # type: ignore[no-untyped-def]
    gone = unique("api-gone")
    Liveness(r).api_beat(gone, 0)
    r.hset(ledger_key(gone), "job_bad", "not json")
    r.sadd(OWNERS, gone)
    acct = make_accountant(Sink())
    acct.start()
    eventually(lambda: r.hgetall(ledger_key(gone)) == {})
    eventually(lambda: ledger(r, acct) == {})


def test_completion_elapsed_uses_the_redis_time_of_the_last_event_when_adopted() -> None:
    c = Completion(None, "m", started_at=1000.0, live=False)  # type: ignore[arg-type]
    assert c.elapsed("1002500-3") == pytest.approx(1002.5 - 1000.0)
    assert c.elapsed("999000-0") == 0.0  # a clock behind the request's start: never negative


def test_a_long_stream_adopted_past_its_deadline_is_read_to_its_end(
    r, make_accountant, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Its end is in the stream, behind more events than one read takes: not a timeout."""
    monkeypatch.setattr("api.accountant.READ_COUNT", 2)
    gone = unique("api-gone")
    Liveness(r).api_beat(gone, 0)
    sub = submitted("m", deadline=-60)  # long past, grace included
    owed(r, gone, sub)
    worker = Worker(r, sub.job_id)
    for _ in range(7):
        worker.token()
    worker.done(9, 7)
    sink = Sink()
    make_accountant(sink, grace=1.0).start()
    eventually(lambda: sink.entries)
    assert [(e.status, e.completion_tokens) for e in sink.entries] == [("200", 7)]
