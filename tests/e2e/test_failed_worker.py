"""A worker whose backend cannot be built at start (here: a model file that is not there;
on a fresh install: a missing package) keeps running, consumes nothing of that queue, and
says why on every heartbeat: `irouter agents`, `/admin/workers` and the 503 a request gets
at once all name the reason, and nothing claims that no worker is running."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from registry.crud import add_backend, add_model

QUEUE, MODEL = "broken-box", "smollm2-broken"
REASON = "LOCAL_MODEL file not found: /nowhere/missing.gguf"


def test_a_worker_that_failed_at_start_says_why(registry_db, start_worker, stack, http) -> None:  # type: ignore[no-untyped-def]
    add_backend(registry_db, QUEUE, "local", queue=QUEUE)
    add_model(registry_db, MODEL, QUEUE, upstream="smollm2-135m")
    w = start_worker(QUEUE, concurrency=2, LOCAL_MODEL="/nowhere/missing.gguf")
    time.sleep(1.2)  # the API's registry snapshot

    workers = http.get("/admin/workers").json()["data"]
    [mine] = [x for x in workers if x.get("pid") == str(w.proc.pid)]
    assert mine["queues"] == "" and REASON in mine["failed"][QUEUE]

    agents = subprocess.run(
        [str(Path(sys.executable).parent / "irouter"), "agents"],
        env=stack.env,
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    assert "FAILED at start" in agents and f"{QUEUE}: RuntimeError: {REASON}" in agents

    assert http.get(f"/v1/models/{MODEL}").json()["available"] is False
    t0 = time.monotonic()
    resp = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
    )
    took = time.monotonic() - t0
    error = resp.json()["error"]
    assert resp.status_code == 503 and error["code"] == "worker_failed"
    assert REASON in error["message"] and "No worker" not in error["message"]
    assert took < 2.0  # at once, not after ROUTER_WORKER_WAIT
    assert int(resp.headers["Retry-After"]) >= 1
    assert stack.redis().llen(QUEUE) == 0  # nothing was queued for it

    w.stop()
    assert w.proc.returncode == 0  # it ran on, serving nothing, until told to stop
    assert "FAILED at start" in w.log.read_text()
