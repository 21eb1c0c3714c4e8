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
