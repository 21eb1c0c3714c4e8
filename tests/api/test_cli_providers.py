"""`irouter providers`: the provider worker `make run` starts, for the queues whose key is set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from api.cli import enabled_provider_queues

BIN = Path(sys.executable).parent


def test_queues_follow_the_keys_that_are_set() -> None:
    env = {"OPENAI_API_KEY": "k", "LLMD_BASE_URL": "http://gw/v1", "XAI_API_KEY": ""}
    assert enabled_provider_queues(env) == ["openai", "llm-d"]
    assert enabled_provider_queues({}) == []


def test_with_no_key_it_says_so_and_idles_until_stopped(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
    proc = subprocess.Popen(
        [str(BIN / "irouter"), "providers"],
        cwd=tmp_path,  # no .env here
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "no provider key set" in line and "OPENAI_API_KEY" in line
    assert proc.poll() is None  # still up: honcho would stop the whole stack otherwise
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def _irouter(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    cmd = [str(BIN / "irouter"), *args]
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=60)


def test_backends_status_reports_health(stack) -> None:  # type: ignore[no-untyped-def]
    import json

    from tasks.health import BackendHealth, BreakerPolicy

    BackendHealth(stack.redis(), BreakerPolicy()).record("openai", False, 5, 7)
    env = {"REDIS_URL": stack.redis_url, "DATABASE_URL": stack.db_url}
    done = _irouter("backends", "status", "--json", **env)
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["openai"]["requests"] >= 1 and rows["openai"]["error_rate"] > 0
    assert {"circuit", "live_workers", "queue_depth", "ttft_ms"} <= set(rows["local"])
    table = _irouter("backends", "status", **env)
    assert table.returncode == 0 and table.stdout.startswith("BACKEND")


def test_cli_says_when_redis_is_unreachable(stack) -> None:  # type: ignore[no-untyped-def]
    for args in (("backends", "status"), ("agents",)):
        done = _irouter(*args, REDIS_URL="redis://127.0.0.1:1/0", DATABASE_URL=stack.db_url)
        assert done.returncode == 2 and "cannot reach Redis" in done.stderr
        assert "Traceback" not in done.stderr


def test_flower_refuses_an_open_address_without_basic_auth() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    cmd = [str(BIN / "irouter"), "flower", "--address", "0.0.0.0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "FLOWER_BASIC_AUTH" in done.stderr
