"""A restart of the whole stack never runs a synchronous completion whose client is gone.

Synchronous jobs (their client holds a connection to one API process) are queued behind a
busy worker together with `POST /v1/jobs` jobs; then the API, the worker and Redis are all
killed with SIGKILL and started again on the same Redis files (AOF). The jobs API's jobs
run to completion; none of the synchronous ones is sent to the upstream again: they end
`cancelled`, the queued ones without ever starting.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest
import redis as redis_lib

from tasks import keys
from tasks.jobs import JobStore
from tasks.keys import JobStatus
from tasks.liveness import Liveness
from tasks.redis_server import server_args
from tests.conftest import BIN, Stack, _answers, _pings, free_port, wait_until
from tests.fakes.openai_api import OpenAIFake, start_openai_fake

MODEL, QUEUE = "grok-3-mini", "grok"


class Mini:
    """Redis (AOF), one provider worker and the API, on their own port and files."""

    def __init__(self, stack: Stack, fake: OpenAIFake) -> None:
        self.stack, self.fake = stack, fake
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = stack.tmp / "restart-redis"
        self.dir.mkdir(exist_ok=True)
        self.api_url = ""
        self.env = {
            "REDIS_URL": self.url,
            "DATABASE_URL": f"sqlite:///{stack.tmp / 'restart.db'}",
            "XAI_API_KEY": "sk-test",
            "XAI_BASE_URL": fake.url + "/v1",
            "ROUTER_WORKER_WAIT": "3",
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def redis(self) -> redis_lib.Redis:
        return redis_lib.Redis.from_url(self.url, decode_responses=True)

    def start(self, round_: int) -> None:
        self.procs["redis"] = self.stack.spawn(
            f"restart-redis-{round_}", server_args(self.port, self.dir)
        )
        wait_until(lambda: _pings(self.url), 15, "redis-server")
        args = [str(BIN / "celery"), "-A", "tasks", "worker", "-Q", QUEUE, "-c", "1"]
        args += ["-n", f"restart{round_}@%h", "--without-mingle", "--without-gossip"]
        worker = self.stack.spawn(f"restart-worker-{round_}", args, **self.env)
        self.procs["worker"] = worker
        log = self.stack.tmp / f"restart-worker-{round_}.log"
        wait_until(lambda: self._announced(worker.pid), 60, "the worker", log)
        port = free_port()
        args = [str(BIN / "gunicorn"), "-k", "gevent", "-w", "1", "-b", f"127.0.0.1:{port}"]
        self.procs["api"] = self.stack.spawn(
            f"restart-api-{round_}", [*args, "api:create_app()"], **self.env
        )
        self.api_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(self.api_url + "/healthz"), 30, "the API")

    def _announced(self, pid: int) -> bool:
        lv = Liveness(self.redis())
        now = lv.server_time()
        return any(w.get("pid") == str(pid) and float(w["alive_until"]) > now for w in lv.workers())

    def kill_all(self) -> None:
        for name in ("api", "worker", "redis"):
            proc = self.procs[name]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def mini(stack: Stack) -> Mini:
    from registry.db import init_db, make_engine

    fake = start_openai_fake({MODEL: None})
    m = Mini(stack, fake)
    init_db(make_engine(m.env["DATABASE_URL"]), {**stack.env, **m.env})
    yield m
    for proc in m.procs.values():
        if proc.poll() is None:
            proc.kill()
    fake.stop()


def words_sent(fake: OpenAIFake) -> list[str]:
    """The last user message of every chat request the upstream received."""
    return [
        r.body["messages"][-1]["content"] for r in fake.requests if r.path == "/v1/chat/completions"
    ]


def test_after_a_restart_no_synchronous_job_of_a_gone_client_runs(mini: Mini) -> None:
    mini.start(1)
    mini.fake.latency = 5.0  # the first job holds the worker's only slot
    payload = {"model": MODEL}

    def sync(text: str) -> None:
        with contextlib.suppress(httpx.HTTPError):  # its API process is killed under it
            httpx.post(
                f"{mini.api_url}/v1/chat/completions",
                json={**payload, "messages": [{"role": "user", "content": text}]},
                timeout=30,
            )

    clients = [threading.Thread(target=sync, args=(f"sync {i}",), daemon=True) for i in range(4)]
    clients[0].start()
    wait_until(lambda: words_sent(mini.fake) == ["sync 0"], 10, "the first job running")
    for c in clients[1:]:
        c.start()
    durable = []
    for i in range(2):
        body = {**payload, "messages": [{"role": "user", "content": f"durable {i}"}]}
        resp = httpx.post(f"{mini.api_url}/v1/jobs", json=body, timeout=10)
        assert resp.status_code == 202
        durable.append(resp.json()["id"])
    backlog = keys.queued_key(QUEUE)
    wait_until(lambda: mini.redis().zcard(backlog) == 5, 10, "3 synchronous and 2 jobs waiting")
    waiting = [j for j in mini.redis().zrange(backlog, 0, -1) if j not in durable]
    running = list(mini.redis().smembers(keys.worker_jobs_key(_worker_id(mini))))
    time.sleep(1.5)  # Redis writes its AOF every second

    mini.kill_all()  # a crash of everything: no goodbye from anyone
    mini.fake.latency = 0.0
    time.sleep(2)  # past the dead API process's last heartbeat (3 x 0.5 s)
    mini.start(2)
    store = JobStore(mini.redis())
    for job_id in durable:
        wait_until(
            lambda job_id=job_id: store.record(job_id).status is JobStatus.SUCCEEDED,
            30,
            f"job {job_id}",
        )
    for job_id in [*waiting, *running]:
        wait_until(
            lambda job_id=job_id: store.record(job_id).status is JobStatus.CANCELLED,
            30,
            f"synchronous job {job_id} cancelled",
        )
    for job_id in waiting:
        assert store.record(job_id).started is None  # never started
    sent = words_sent(mini.fake)
    assert sorted(sent) == ["durable 0", "durable 1", "sync 0"]  # nothing synchronous again
    assert len(waiting) == 3 and len(running) == 1


def _worker_id(mini: Mini) -> str:
    pid = str(mini.procs["worker"].pid)
    return next(w["id"] for w in Liveness(mini.redis()).workers() if w.get("pid") == pid)
