"""Workers announce their models, device, precision and load; a model is available only
while a live worker has it loaded, and stops being so when that worker dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from registry.crud import add_backend, add_model
from tests.conftest import wait_until


def available(http: httpx.Client, model: str) -> bool:
    return bool(http.get(f"/v1/models/{model}").json()["available"])


def test_heartbeat_announces_and_expires_when_the_worker_is_killed(
    registry_db, start_worker, stack, http: httpx.Client
) -> None:
    add_backend(registry_db, "local-announce", "local", queue="local-announce")
    add_model(registry_db, "smollm2-announce", "local-announce", upstream="smollm2-135m")
    add_model(registry_db, "not-loaded-anywhere", "local-announce", upstream="llama-9000")
    time.sleep(1.2)  # registry snapshot refresh
    assert not available(http, "smollm2-announce")
    w = start_worker("local-announce", concurrency=2)
    wait_until(lambda: available(http, "smollm2-announce"), 10, "availability")
    assert not available(http, "not-loaded-anywhere")  # the queue is live, the model is not

    agents = subprocess.run(
        [str(Path(sys.executable).parent / "irouter"), "agents", "--json"],
        env=stack.env,
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    import orjson

    mine = [a for a in orjson.loads(agents) if a.get("pid") == str(w.proc.pid)]
    assert mine and mine[0]["models"] == "smollm2-135m"
    assert mine[0]["device"] == "cpu" and mine[0]["dtype"] == "float32"
    assert mine[0]["capacity"] == "2" and mine[0]["load"] == "0"  # as wide as -c 2

    os.kill(w.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: not available(http, "smollm2-announce"), 10, "expiry")
    assert time.monotonic() - killed < 3 * 0.5 + 2  # three missed heartbeats, plus slack
