"""Fair dispatch across API keys on the real stack: the API under gunicorn, a real Celery
worker on the SmolLM2 model, Redis (tasks/lua/release.lua).

- One key's backlog of queued jobs does not hold back another key's request: its job goes
  onto the queue's list at the next turn of the ring, not behind the whole backlog. A job
  is never preempted, so while the backlog's jobs fill every slot of the worker the other
  key's job waits for the running ones to end (one turn); a key whose max-parallel leaves
  a slot free lets another key's first token come about as fast as on the idle stack.
- Jobs held back (a key at its max-parallel) survive a crash of the API and of the worker
  running them: each one completes, in order, never two at once, none lost.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tasks import keys
from tasks.jobs import JobRecord, JobStore
from tasks.keys import JobStatus
from tasks.liveness import Liveness
from tests.conftest import Stack, Worker, wait_until

MODEL = "smollm2-135m"
QUEUE = keys.LOCAL_QUEUE
PROMPT = [{"role": "user", "content": "Name a colour."}]
BACKLOG = 60  # jobs the busy key queues at once


@dataclass
class Tenant:
    name: str
    http: httpx.Client
    sdk: OpenAI


@dataclass
class FairApi:
    url: str
    slots: int  # jobs the session's worker runs at once
    tenants: dict[str, Tenant]


def tenant(url: str, name: str, secret: str) -> Tenant:
    http = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {secret}"})
    sdk = OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0, timeout=300)
    return Tenant(name, http, sdk)


def registry_with_keys(stack: Stack, file: str, **max_parallel: int | None) -> tuple[str, dict]:
    """A registry of its own (so auth is on) holding one key per name; their secrets."""
    from registry.apikeys import create_key
    from registry.db import init_db, make_engine

    db_url = f"sqlite:///{stack.tmp / file}"
    engine = make_engine(db_url)
    init_db(engine, stack.env)
    secrets = {}
    for name, cap in max_parallel.items():
        _, secrets[name] = create_key(engine, name, max_parallel=cap)
    return db_url, secrets


@pytest.fixture(scope="module")
def fair(stack: Stack, start_api: Callable[..., str], worker: Worker) -> Iterator[FairApi]:
    """An API in front of the session's local worker, with three keys: `fair-busy` and
    `fair-b` without limits, `fair-capped` at max-parallel half the worker's slots.

    The API runs with the default ROUTER_QUEUE_TIMEOUT: its estimate of a new job's queue
    time counts the jobs fair dispatch puts ahead of it (a turn of each key with jobs
    held), not another key's whole backlog, so B's streamed request is never refused as
    overloaded behind A's."""
    pid = str(worker.proc.pid)
    slots = next(
        int(w["concurrency"]) for w in Liveness(stack.redis()).workers() if w["pid"] == pid
    )
    caps = {"fair-busy": None, "fair-b": None, "fair-capped": max(slots // 2, 1)}
    db_url, secrets = registry_with_keys(stack, "fair.db", **caps)
    url = start_api("api-fair", DATABASE_URL=db_url)
    assert httpx.get(url + "/v1/models", timeout=10).status_code == 401  # auth is on
    api = FairApi(url, slots, {n: tenant(url, n, s) for n, s in secrets.items()})
    yield api
    for t in api.tenants.values():
        t.http.close()


def first_token(t: Tenant) -> tuple[float, str]:
    """Seconds from a streamed chat completion's request to its first content token, with
    the openai SDK; and the id of the job behind it. The stream is read to its end."""
    started = time.perf_counter()
    raw = t.sdk.chat.completions.with_raw_response.create(
        model=MODEL, messages=PROMPT, max_tokens=2, temperature=0, stream=True
    )
    first = 0.0
    for chunk in raw.parse():
        if not first and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
    assert first, "no token streamed"
    return first, raw.headers["x-router-job-id"]


def idle_first_token(t: Tenant) -> float:
    """The median of three first-token times on the idle stack, after one to warm up
    (connections, the API's registry snapshot)."""
    first_token(t)
    return statistics.median(first_token(t)[0] for _ in range(3))


def records(r: Any, ids: list[str]) -> list[JobRecord]:
    store = JobStore(r)
    found = [store.record(i) for i in ids]
    assert all(found)
    return [rec for rec in found if rec]


def flood(t: Tenant, max_tokens: int) -> list[str]:
    """`t` queues BACKLOG jobs at once (POST /v1/jobs); their ids."""

    def submit(_: int) -> str:
        body = {"model": MODEL, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0}
        resp = t.http.post("/v1/jobs", json=body)
        assert resp.status_code == 202, resp.text
        return str(resp.json()["id"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(submit, range(BACKLOG)))


def wait_running(r: Any, ids: list[str], n: int) -> None:
    """Until `n` of the jobs `ids` run: the worker is busy with them, the rest are held."""

    def running() -> bool:
        return sum(rec.status is JobStatus.RUNNING for rec in records(r, ids)) >= n

    wait_until(running, 120, f"{n} jobs running")


def cancel_all(t: Tenant, ids: list[str]) -> None:
    """DELETE every job of `ids` not ended yet, so later tests find the worker idle."""

    def cancel(job_id: str) -> None:
        resp = t.http.delete(f"/v1/jobs/{job_id}")
        assert resp.status_code in (200, 409), resp.text  # 409: it had just finished

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(cancel, ids))


def not_started_before(recs: list[JobRecord], job: JobRecord) -> int:
    """How many of `recs` had not started when `job` did."""
    assert job.started
    return sum(rec.started is None or rec.started > job.started for rec in recs)


def test_a_capped_keys_backlog_leaves_another_key_its_first_token_time(
    fair: FairApi, stack: Stack
) -> None:
    """Key `fair-capped` (max-parallel half the worker's slots) queues 60 jobs at once; key
    B then streams three completions, one after the other. B's median time to first token
    stays within 3x its median on the idle stack.

    Why 3x is fair: B's job, its key holding nothing, is first in the ring and released at
    once; the capped key's jobs leave slots of the worker free, so it starts at once. What
    remains is the continuous batch: B's prefill waits for the step in progress and shares
    the CPU with the capped key's rows, about twice a lone first token. Behind the backlog
    instead (one list, first come first served) it would wait for 60 jobs over the slots.
    The CPU is shared with other test runs whose load drifts: the idle figure is measured
    right before and right after (once the backlog is cancelled), and the larger is used."""
    busy, b = fair.tenants["fair-capped"], fair.tenants["fair-b"]
    r = stack.redis()
    before = idle_first_token(b)
    ids = flood(busy, max_tokens=16)
    try:
        wait_running(r, ids, max(fair.slots // 2, 1))
        held = r.llen(keys.held_key(QUEUE, busy.name))
        tries = [first_token(b) for _ in range(3)]
        loaded = statistics.median(t for t, _ in tries)
        recs, b_rec = records(r, ids), records(r, [tries[0][1]])[0]
    finally:
        cancel_all(busy, ids)
    after = statistics.median(first_token(b)[0] for _ in range(3))
    idle = max(before, after)
    behind = not_started_before(recs, b_rec)
    figures = (
        f"B's first token: idle {before * 1000:.0f} ms before, {after * 1000:.0f} ms after; "
        f"beside {busy.name}'s backlog {loaded * 1000:.0f} ms ({loaded / idle:.1f}x); "
        f"{held} jobs held when B asked, {behind} of {BACKLOG} not started when B's job did"
    )
    print(figures)
    assert b_rec.tenant == "fair-b"
    assert held >= BACKLOG // 2 and behind >= BACKLOG // 2, figures
    assert loaded <= 3 * idle, figures


def test_a_keys_backlog_delays_another_keys_job_by_one_turn(fair: FairApi, stack: Stack) -> None:
    """Key `fair-busy` (no max-parallel) queues 60 jobs at once and fills every slot of the
    worker; key B then streams one completion. No job is preempted, so B's job waits for
    the jobs running when it came to end: one turn, its time set by their length. It does
    not wait for the backlog: it starts before nearly all of it, within about one run of
    the busy key's jobs, where first come first served would take 60 over the slots."""
    busy, b = fair.tenants["fair-busy"], fair.tenants["fair-b"]
    r = stack.redis()
    ids = flood(busy, max_tokens=8)
    try:
        wait_running(r, ids, fair.slots)
        held = r.llen(keys.held_key(QUEUE, busy.name))
        loaded, b_job = first_token(b)
        recs, b_rec = records(r, ids), records(r, [b_job])[0]
    finally:
        cancel_all(busy, ids)
    assert b_rec.started
    waited = b_rec.started - b_rec.created
    # one turn: the longest run of the busy key's jobs that ended before B's job started
    runs = [
        rec.finished - rec.started
        for rec in recs
        if rec.status is JobStatus.SUCCEEDED and rec.started and rec.finished
        if rec.finished <= b_rec.started
    ]
    turn = max(runs, default=0.0)
    behind = not_started_before(recs, b_rec)
    fifo = BACKLOG / fair.slots * turn
    figures = (
        f"B's first token beside {busy.name}'s backlog: {loaded * 1000:.0f} ms; its job "
        f"waited {waited:.1f} s for a slot, one turn of the busy key's jobs is {turn:.1f} s "
        f"(first come first served: ~{fifo:.0f} s); {held} jobs held when B asked, "
        f"{behind} of {BACKLOG} not started when B's job did"
    )
    print(figures)
    assert b_rec.tenant == "fair-b" and turn > 0, figures
    assert held >= BACKLOG // 2 and behind >= BACKLOG - 3 * fair.slots, figures
    assert waited <= 1.5 * turn + 1.0, figures


# -- restart safety ----------------------------------------------------------------------

FAIR_QUEUE = "local-fair"
FAIR_MODEL = "smollm2-fair"
SERIAL = "fair-serial"  # a key with max-parallel 1


@dataclass
class Serial:
    stack: Stack
    db_url: str
    secret: str
    start_worker: Callable[..., Worker]
    start_api: Callable[..., str]
    workers: list[Worker]

    def worker(self) -> Worker:
        w = self.start_worker(FAIR_QUEUE, concurrency=2)
        self.workers.append(w)
        return w

    def api(self, name: str) -> tuple[str, Any]:
        """A fresh API process on this registry; its URL and process."""
        url = self.start_api(name, DATABASE_URL=self.db_url)
        return url, self.stack.procs[-1]


@pytest.fixture(scope="module")
def serial(
    stack: Stack, start_worker: Callable[..., Worker], start_api: Callable[..., str]
) -> Iterator[Serial]:
    """A local backend on a queue of its own (its workers are killed here, never the
    session's), and a registry with one key at max-parallel 1."""
    from registry.crud import add_backend, add_model
    from registry.db import make_engine

    db_url, secrets = registry_with_keys(stack, "fair-serial.db", **{SERIAL: 1})
    engine = make_engine(db_url)
    add_backend(engine, "local-fair", "local", queue=FAIR_QUEUE)
    add_model(engine, FAIR_MODEL, "local-fair", upstream=MODEL)
    s = Serial(stack, db_url, secrets[SERIAL], start_worker, start_api, [])
    yield s
    for w in s.workers:
        w.stop()


def test_held_jobs_survive_a_crash_of_the_api_and_the_worker(serial: Serial) -> None:
    """A key at max-parallel 1 queues 5 jobs: one runs, the others are held. The worker and
    the API are killed (SIGKILL: no goodbye), then started again. Every job completes, one
    at a time, in the order it was queued; the one that was running is redelivered."""
    r = serial.stack.redis()
    store = JobStore(r)
    old_worker = serial.worker()
    url, old_api = serial.api("api-fair-serial-1")
    ids = []
    with httpx.Client(base_url=url, timeout=30) as http:
        http.headers["Authorization"] = f"Bearer {serial.secret}"
        for i in range(5):
            text = f"Count from {i} to {i + 30}, in words."
            body = {"model": FAIR_MODEL, "messages": [{"role": "user", "content": text}]}
            resp = http.post("/v1/jobs", json={**body, "max_tokens": 12, "temperature": 0})
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])
    give_up = time.monotonic() + 120
    while not r.xlen(keys.events_key(ids[0])):  # the first job's first token
        assert time.monotonic() < give_up, "the first job never started"
        time.sleep(0.01)
    old_worker.proc.kill()
    old_worker.proc.wait(timeout=10)
    states = [store.record(i).status for i in ids]
    running = [i for i, s in zip(ids, states, strict=True) if s is JobStatus.RUNNING]
    waiting = [i for i, s in zip(ids, states, strict=True) if s is JobStatus.QUEUED]
    held = keys.held_key(FAIR_QUEUE, SERIAL)
    assert len(running) <= 1 and len(waiting) >= 3, states  # max-parallel 1
    assert r.lrange(held, 0, -1)[::-1] == waiting, states  # held, in order
    old_api.kill()
    old_api.wait(timeout=10)
    serial.worker()
    url, _ = serial.api("api-fair-serial-2")

    with httpx.Client(base_url=url, timeout=30) as http:
        http.headers["Authorization"] = f"Bearer {serial.secret}"

        def ended() -> bool:
            jobs = [http.get(f"/v1/jobs/{i}").json() for i in ids]
            return all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs)

        wait_until(ended, 240, "every job ending")
        jobs = [http.get(f"/v1/jobs/{i}").json() for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 5, jobs
    assert all(j["text"] for j in jobs)
    assert [j["attempt"] for j in jobs] == [2 if i in running else 1 for i in ids]
    recs = records(r, ids)
    for before, after in itertools.pairwise(recs):  # in order, one at a time
        assert before.finished and after.started and after.started >= before.finished, recs
    assert not r.exists(held, keys.ring_key(FAIR_QUEUE), keys.running_key(SERIAL))
