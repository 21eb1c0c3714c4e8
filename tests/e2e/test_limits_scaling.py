"""A key's limits hold exactly however many API processes serve it: two API instances, each
gunicorn with two gevent workers, on the same Redis and the same registry file, so one
key's requests land on four processes at once. Admission is one Lua script per request
(tasks/lua/admit.lua), so the processes cannot together admit more than the key allows.

A burst of 3N concurrent POST /v1/jobs (max_tokens 1, the real local worker behind) goes
3N/4 to each of the four processes, on connections opened beforehand and sorted by the
worker that accepted each. With rpm N, N are admitted (202) and the rest get 429
rate_limit_exceeded; with a budget of N requests' worst case, N are admitted and the rest
get 429 insufficient_quota, and what is spent and reserved adds up to exactly N worst cases.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import Stack

N = 20
#: The local model under an output price only: a request's worst case is its max_tokens (1)
#: at that price, and a job that generates its one token costs exactly that much, so a job
#: that ends during the burst settles its reservation without freeing any of the budget.
PRICED = "limits-smol"
OUTPUT_PRICE = 1000.0  # USD per 1M tokens
WORST = math.ceil(1 * OUTPUT_PRICE * 1_000_000_000 / 1_000_000)  # nano-USD per request
BODY = {
    "messages": [{"role": "user", "content": "Count: 1, 2, 3,"}],
    "max_tokens": 1,
    "temperature": 0,
}


@dataclass
class Cluster:
    urls: list[str]  # two API instances on one Redis and one registry
    secrets: dict[str, str]  # what the key is for -> its secret
    names: dict[str, str]  # what the key is for -> its name
    stack: Stack


@pytest.fixture(scope="module")
def cluster(stack: Stack, start_api: Callable[..., str], worker: Any) -> Cluster:
    """Two API instances on a registry of their own: the priced model, a key with rpm N,
    a key with a budget of N worst cases, and an unlimited key to warm the processes up."""
    from registry.apikeys import create_key
    from registry.crud import add_model
    from registry.db import init_db, make_engine

    db_url = f"sqlite:///{stack.tmp / 'limits-scaling.db'}"
    engine = make_engine(db_url)
    init_db(engine, stack.env)
    add_model(engine, PRICED, "local", upstream="smollm2-135m", output_price=OUTPUT_PRICE)
    tag = uuid.uuid4().hex[:8]  # Redis outlives this module: fresh buckets for fresh keys
    names = {which: f"{which}-{tag}" for which in ("rpm", "budget", "warm")}
    secrets = {
        "rpm": create_key(engine, names["rpm"], rpm=N)[1],
        # floor(budget * 1e9) falls between N and N + 1 worst cases whatever the rounding
        "budget": create_key(
            engine, names["budget"], budget_usd=(N + 0.5) * WORST / 1e9, budget_period="total"
        )[1],
        "warm": create_key(engine, names["warm"])[1],
    }
    # connections opened before a burst may wait longer than gunicorn's 2 s keep-alive
    env = {"DATABASE_URL": db_url, "GUNICORN_CMD_ARGS": "--keep-alive 60"}
    urls = [start_api(f"api-limits-{i}", **env) for i in range(2)]
    return Cluster(urls, secrets, names, stack)


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: httpx.Headers


def workers(cluster: Cluster) -> dict[int, tuple[str, int]]:
    """The four gunicorn workers: pid -> (their instance's URL, its port)."""
    found = {}
    for url in cluster.urls:
        port = int(url.rsplit(":", 1)[1])
        (master,) = [p for p in cluster.stack.procs if f"127.0.0.1:{port}" in p.args]
        for worker in psutil.Process(master.pid).children():
            found[worker.pid] = (url, port)
    assert len(found) == 4, found
    return found


def accepted_by(procs: dict[int, tuple[str, int]], url: str, client_port: int) -> int:
    """The worker of the instance at `url` holding the connection from `client_port`."""
    for pid, (where, port) in procs.items():
        conns = psutil.Process(pid).net_connections("tcp") if where == url else []
        if any(c.laddr.port == port and c.raddr and c.raddr.port == client_port for c in conns):
            return pid
    raise AssertionError(f"no worker of {url} holds the connection from port {client_port}")


def connect(cluster: Cluster, secret: str, per: int) -> list[httpx.Client]:
    """`per` open connections held by each of the four processes: a client per connection,
    each kept if the worker that accepted it (found by the client's port) needs one more.
    Which worker accepts is the kernel's choice, so this opens as many as it takes."""
    auth = {"Authorization": f"Bearer {secret}"}
    procs = workers(cluster)
    kept: dict[int, list[httpx.Client]] = {pid: [] for pid in procs}
    for _ in range(40 * per):
        short = {url for pid, (url, _) in procs.items() if len(kept[pid]) < per}
        if not short:
            return [c for clients in kept.values() for c in clients]
        url = sorted(short)[0]
        client = httpx.Client(base_url=url, headers=auth, timeout=60)
        with client.stream("GET", "/v1/models") as r:  # reserves nothing
            assert r.status_code == 200
            port = r.extensions["network_stream"].get_extra_info("client_addr")[1]
            r.read()
        pid = accepted_by(procs, url, port)
        if len(kept[pid]) < per:
            kept[pid].append(client)
        else:
            client.close()
    pytest.fail(f"the kernel never spread {per} connections on each worker: {kept}")


def burst(cluster: Cluster, secret: str, body: dict, per: int) -> tuple[list[Answer], float]:
    """4 * `per` POST /v1/jobs at once, `per` on each of the four processes, on
    connections opened before the start; (the answers, seconds from the start to the
    last answer)."""
    clients = connect(cluster, secret, per)
    gate = threading.Barrier(len(clients) + 1)
    answers: list[Answer | None] = [None] * len(clients)

    def send(i: int) -> None:
        gate.wait()
        r = clients[i].post("/v1/jobs", json=body)
        answers[i] = Answer(r.status_code, r.json(), r.headers)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    gate.wait()
    start = time.monotonic()
    for t in threads:
        t.join(timeout=90)
    elapsed = time.monotonic() - start
    for c in clients:
        c.close()
    assert all(a is not None for a in answers), "a request never answered"
    return [a for a in answers if a is not None], elapsed


def warm_up(cluster: Cluster) -> None:
    """A job through every process of both instances with the unlimited key, so the burst
    meets warm processes (the registry read, the scripts loaded, the worker's model)."""
    answers, _ = burst(cluster, cluster.secrets["warm"], {"model": "smollm2-135m", **BODY}, 1)
    assert [a.status for a in answers] == [202] * 4, [a.body for a in answers]


@pytest.fixture
def jobs(cluster: Cluster) -> Iterator[list[tuple[str, str]]]:
    """(secret, job id) of the jobs a test created: cancelled at its end, so that none is
    left for the local worker (each key sees only its own jobs)."""
    created: list[tuple[str, str]] = []
    yield created
    with httpx.Client(base_url=cluster.urls[0], timeout=30) as http:
        for secret, job_id in created:
            r = http.delete(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {secret}"})
            assert r.status_code in (200, 409), r.text  # 409: it had finished


def admitted(answers: list[Answer], code: str) -> list[Answer]:
    """The answers that were admitted (every one a 202); the others are all 429 `code`."""
    ok = [a for a in answers if a.status != 429]
    assert [a.status for a in ok] == [202] * len(ok), [a.body for a in ok]
    refused = [a for a in answers if a.status == 429]
    assert {a.body["error"]["code"] for a in refused} <= {code}, [a.body for a in refused]
    return ok


def test_rpm_admits_exactly_n_across_four_processes(cluster: Cluster, jobs: list) -> None:
    warm_up(cluster)
    secret = cluster.secrets["rpm"]
    answers, elapsed = burst(cluster, secret, {"model": "smollm2-135m", **BODY}, 3 * N // 4)
    ok = admitted(answers, "rate_limit_exceeded")
    jobs += [(secret, a.body["id"]) for a in ok]
    # The bucket leaks N per minute: a request more per 60/N s the burst lasted, at most.
    # A burst on a machine fast enough to answer it within 60/N s (3 s) admits exactly N.
    leaked = math.floor(elapsed * N / 60)
    assert N <= len(ok) <= N + leaked, (len(ok), elapsed)
    remaining = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in ok)
    if elapsed < 60 / N:  # nothing leaked out: each admission took the next of N places
        assert len(ok) == N
        assert remaining == list(range(N))
    refused = [a for a in answers if a.status == 429]
    assert len(refused) == 3 * N - len(ok)
    for a in refused:
        assert int(a.headers["Retry-After"]) >= 1
        assert a.headers["x-ratelimit-limit-requests"] == str(N)
        assert a.headers["x-ratelimit-remaining-requests"] == "0"


def test_budget_admits_exactly_n_worst_cases_across_four_processes(
    cluster: Cluster, jobs: list
) -> None:
    from tasks.tenants import Tenants

    warm_up(cluster)
    secret = cluster.secrets["budget"]
    answers, _ = burst(cluster, secret, {"model": PRICED, **BODY}, 3 * N // 4)
    ok = admitted(answers, "insufficient_quota")
    jobs += [(secret, a.body["id"]) for a in ok]
    assert len(ok) == N
    assert sum(a.status == 429 for a in answers) == 2 * N
    # Each admission reserved one worst case; a job that ended since moved it to `spent`.
    spent, reserved = Tenants(cluster.stack.redis()).spend(cluster.names["budget"], "total")
    assert spent + reserved == N * WORST, (spent, reserved)
