"""Session fixtures: a real redis-server, a real Celery worker process on the real model,
the real API under gunicorn, and the real `openai` SDK pointed at it.

Nothing is faked: workers and the API are subprocesses started the way the Procfile
starts them, on free ports, against a throwaway Redis and registry file.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis as redis_lib

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HEARTBEAT = "0.5"  # seconds; a killed worker is noticed within 1.5 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None):
    """Poll `check` until true; fail with the tail of `log` if it never is."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if check():
            return
        time.sleep(0.1)
    tail = log.read_text()[-4000:] if log and log.exists() else ""
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{tail}")


@dataclass
class Stack:
    """Where the session's services are, and the environment every process shares."""

    redis_url: str
    db_url: str
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def redis(self) -> redis_lib.Redis:
        return redis_lib.Redis.from_url(self.redis_url, decode_responses=True)

    def spawn(self, name: str, args: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            args, cwd=ROOT, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs.append(proc)
        return proc

    def announced(self, pid: int) -> bool:
        """True once the worker process `pid` has a live heartbeat in Redis."""
        from tasks.liveness import Liveness

        liveness = Liveness(self.redis())
        now = liveness.server_time()
        return any(
            w.get("pid") == str(pid) and float(w["alive_until"]) > now for w in liveness.workers()
        )


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Warm shutdown (it says goodbye), so it stops consuming its queues for later tests."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A real redis-server on a free port and a fresh registry file."""
    from registry.db import init_db, make_engine
    from tasks.redis_server import server_args

    tmp = tmp_path_factory.mktemp("stack")
    port = free_port()
    (tmp / "redis").mkdir()
    url = f"redis://127.0.0.1:{port}/0"
    db_url = f"sqlite:///{tmp / 'router.db'}"
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
    env.update(
        REDIS_URL=url,
        DATABASE_URL=db_url,
        ROUTER_HEARTBEAT_INTERVAL=HEARTBEAT,
        ROUTER_TASK_EVENTS="0",
        PYTHONUNBUFFERED="1",
    )
    s = Stack(url, db_url, tmp, env)
    s.spawn("redis", server_args(port, tmp / "redis", aof=False))
    wait_until(lambda: _pings(url), 15, "redis-server", tmp / "redis.log")
    init_db(make_engine(db_url), env)
    yield s
    for proc in reversed(s.procs):  # API and workers first, Redis last
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _pings(url: str) -> bool:
    try:
        return bool(redis_lib.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis_lib.RedisError:
        return False


@pytest.fixture(scope="session")
def start_worker(stack: Stack) -> Callable[..., Worker]:
    """Start `celery -A tasks worker -Q <queues>` and wait until it announces itself."""
    counter = iter(range(1000))

    def start(queues: str = "local-mps", concurrency: int = 4, **env: str) -> Worker:
        name = f"worker{next(counter)}"
        args = [str(BIN / "celery"), "-A", "tasks", "worker", "-Q", queues, "-n", f"{name}@%h"]
        args += ["-c", str(concurrency), "-l", "info", "--without-mingle", "--without-gossip"]
        proc = stack.spawn(name, args, **env)
        log = stack.tmp / f"{name}.log"
        wait_until(lambda: stack.announced(proc.pid), 180, f"{name} on {queues}", log)
        return Worker(name, proc, log)

    return start


@pytest.fixture(scope="session")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    """The session's local-mps worker on the real SmolLM2 model."""
    return start_worker("local-mps")


@pytest.fixture(scope="session")
def start_api(stack: Stack) -> Callable[..., str]:
    """Start the API under gunicorn with gevent workers, as the Procfile runs it; its URL."""
    counter = iter(range(1000))

    def start(name: str = "", **env: str) -> str:
        name = name or f"api{next(counter)}"
        port = free_port()
        args = [str(BIN / "gunicorn"), "-k", "gevent", "-w", "2", "-b", f"127.0.0.1:{port}"]
        args += ["--graceful-timeout", "5", "api:create_app()"]
        stack.spawn(name, args, **{"ROUTER_WORKER_WAIT": "3", **env})
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url + "/healthz"), 30, name, stack.tmp / f"{name}.log")
        return url

    return start


@pytest.fixture(scope="session")
def api_url(start_api: Callable[..., str], worker: Worker) -> str:
    """The session's API, in front of the local worker."""
    return start_api("api")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def openai_client(api_url: str):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    return OpenAI(base_url=api_url + "/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture
def http(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=120) as client:
        yield client


@pytest.fixture(autouse=True)
def _close_accountants(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Stop the accounting thread of every in-process app a test started: one app per
    process in production, hundreds of short-lived ones here, whose threads would otherwise
    poll Redis (and log its absence) for the rest of the session."""
    from api.accountant import Accountant

    started: set[Accountant] = set()
    real_start = Accountant.start

    def start(self: Accountant) -> None:
        started.add(self)
        real_start(self)

    monkeypatch.setattr(Accountant, "start", start)
    yield
    for accountant in started:
        accountant.close(timeout=2)


@pytest.fixture
def app(stack: Stack, worker: Worker):  # type: ignore[no-untyped-def]
    """An in-process app on the session's Redis and registry, in front of the local worker."""
    return stack_app(stack)


def stack_app(stack: Stack):  # type: ignore[no-untyped-def]
    """An in-process app on the session's Redis and registry, with a 1 s worker wait."""
    from api import create_app

    return create_app(
        {
            "REDIS_URL": stack.redis_url,
            "DATABASE_URL": stack.db_url,
            "WORKER_WAIT": 1.0,
            "REGISTRY_TTL": 0.0,
            "TESTING": True,
        }
    )


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture(scope="session")
def registry_db(stack: Stack):  # type: ignore[no-untyped-def]
    """The session stack's registry database (an SQLAlchemy engine)."""
    from registry.db import make_engine

    return make_engine(stack.db_url)
