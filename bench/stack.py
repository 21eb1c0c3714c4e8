"""Start the stack the way `make run` does, for benchmarks: redis-server, Celery workers
and the API under gunicorn (gevent), as subprocesses on free ports in a temp directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """A throwaway stack; use as a context manager."""

    def __init__(self, root: Path = ROOT, **env: str) -> None:
        """`root`: the checkout whose code the processes run (another commit's worktree
        to compare with this one); the venv is this one's."""
        self.root = root
        self.tmp = Path(tempfile.mkdtemp(prefix="irouter-bench-"))
        self.redis_url = f"redis://127.0.0.1:{free_port()}/0"
        self.api_url = ""
        self.flower_url = ""
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": f"sqlite:///{self.tmp / 'router.db'}",
            "PYTHONUNBUFFERED": "1",
            **({"PYTHONPATH": str(root)} if root != ROOT else {}),
            **env,
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}  # pid -> its output

    def spawn(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        merged = {**self.env, **(env or {})}
        full_env = {k: v for k, v in merged.items() if v is not None}  # None: unset it
        proc = subprocess.Popen(args, cwd=self.root, env=full_env, stdout=log, stderr=log)
        self.procs.append(proc)
        self.logs[proc.pid] = self.tmp / f"{name}.log"
        return proc

    def log(self, pid: int) -> Path:
        """Where process `pid` writes its output."""
        return self.logs[pid]

    def running(self, pid: int) -> bool:
        """Whether process `pid` is still running."""
        return next(p for p in self.procs if p.pid == pid).poll() is None

    def __enter__(self) -> Stack:
        from registry.db import init_db, make_engine
        from tasks.redis_server import server_args

        port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        (self.tmp / "redis").mkdir()
        self.spawn("redis", server_args(port, self.tmp / "redis"))
        _wait(lambda: _pings(self.redis_url), 15, "redis")
        init_db(make_engine(self.env["DATABASE_URL"]), self.env)
        return self

    def worker(self, queues: str = "local-mps", *extra: str, env: dict | None = None) -> int:
        """Start a worker, wait until it has announced itself; returns its pid."""
        args = [str(BIN / "celery"), "-A", "tasks", "worker", "-Q", queues, "-l", "warning"]
        proc = self.spawn(f"worker-{len(self.procs)}", [*args, *extra], env)
        self._announced(proc, queues)
        return proc.pid

    def providers(self, env: dict | None = None) -> int:
        """Start `irouter providers` as the Procfile does (a gevent worker on every provider
        queue whose key is set), wait until it has announced itself; returns its pid."""
        path = f"{BIN}{os.pathsep}{self.env.get('PATH', '')}"  # as make run: the venv first
        proc = self.spawn(
            "providers", [str(BIN / "irouter"), "providers"], {"PATH": path, **(env or {})}
        )
        self._announced(proc, "providers")
        return proc.pid

    def flower(self, events_idle: float = 60.0) -> str:
        """Start `irouter flower` as the Procfile does, on a free port; its URL."""
        port = free_port()
        path = f"{BIN}{os.pathsep}{self.env.get('PATH', '')}"
        args = [str(BIN / "irouter"), "flower", "--port", str(port)]
        args += ["--events-idle", f"{events_idle:g}"]
        self.spawn("flower", args, {"PATH": path})
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: _answers(url + "/healthcheck"), 60, "Flower")
        return url

    def _announced(self, proc: subprocess.Popen[bytes], what: str) -> None:
        from tasks.liveness import Liveness

        lv = Liveness(redis.Redis.from_url(self.redis_url, decode_responses=True))

        def announced() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"worker on {what} exited with {proc.returncode}")
            now = lv.server_time()
            return any(
                w.get("pid") == str(proc.pid) and float(w["alive_until"]) > now
                for w in lv.workers()
            )

        _wait(announced, 180, f"worker on {what}")

    def restart_redis(self, down: float = 0.0) -> tuple[float, float]:
        """Stop redis-server gracefully (it writes its AOF), stay down `down` seconds, start
        it again on the same port and files; (stopped_at, answering_again_at) monotonic."""
        from tasks.redis_server import server_args

        old = self.procs[0]
        old.terminate()
        old.wait(timeout=30)
        stopped = time.monotonic()
        time.sleep(down)
        port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        self.procs[0] = self.spawn("redis", server_args(port, self.tmp / "redis"))
        self.procs.pop()  # spawn appended it; it lives at index 0
        _wait(lambda: _pings(self.redis_url), 15, "redis")
        return stopped, time.monotonic()

    def kill(self, pid: int) -> None:
        """SIGKILL one process (a worker dying without a goodbye)."""
        proc = next(p for p in self.procs if p.pid == pid)
        proc.kill()
        proc.wait(timeout=10)

    def stop(self, pid: int) -> None:
        """Stop one process (warm shutdown) and wait for it."""
        proc = next(p for p in self.procs if p.pid == pid)
        proc.terminate()
        proc.wait(timeout=30)

    def api(self, workers: int = 2, name: str = "api", env: dict | None = None) -> str:
        """Start the API as the Procfile does; returns its base URL. `name`: its log and
        metrics directory, for a second API beside the first; `env`: settings of its own."""
        port = free_port()
        args = [str(BIN / "gunicorn"), "-k", "gevent", "-w", str(workers)]
        args += ["--worker-connections", "2000", "-b", f"127.0.0.1:{port}", "api:create_app()"]
        metrics = self.tmp / ("metrics" if name == "api" else f"metrics-{name}")
        metrics.mkdir(exist_ok=True)
        self.spawn(name, args, {"PROMETHEUS_MULTIPROC_DIR": str(metrics), **(env or {})})
        self.api_url = f"http://127.0.0.1:{port}"
        _wait(lambda: _answers(self.api_url + "/healthz"), 30, "the API")
        return self.api_url

    def __exit__(self, *_: object) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
