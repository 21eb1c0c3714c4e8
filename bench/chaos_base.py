"""What the chaos scenarios share: the stacks they start and the wait for their jobs.

`STACK_ROOT` is the checkout whose code a stack runs (bench/chaos.py sets it from `--root`).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.stack import ROOT, Stack

FAST_HEARTBEAT = {
    "ROUTER_HEARTBEAT_INTERVAL": "0.5",
    "ROUTER_TASK_EVENTS": "0",
    "ROUTER_REDELIVER_AFTER": "5",
}
#: The checkout whose code the stacks run (`--root`).
STACK_ROOT: Path = ROOT


def provider_stack(**env: str) -> Stack:
    """A stack for provider workers (fake keys; `env` adds or overrides settings)."""
    return Stack(
        STACK_ROOT,
        **FAST_HEARTBEAT,
        OPENAI_API_KEY="set",
        XAI_API_KEY="set",
        ROUTER_WORKER_WAIT="5",
        ROUTER_REGISTRY_TTL="0.2",
        **env,
    )


def finish_all(http: httpx.Client, ids: list[str], timeout: float) -> dict[str, Any]:
    """Poll jobs `ids` until all ended or `timeout` s passed: succeeded count, a count per
    status, and each job's status ("not found" while the API never knew it)."""
    give_up, status = time.monotonic() + timeout, dict.fromkeys(ids, "not found")
    while time.monotonic() < give_up:
        for job_id in [j for j, s in status.items() if s not in ("succeeded", "failed")]:
            try:
                r = http.get(f"/v1/jobs/{job_id}")
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                status[job_id] = r.json()["status"]
        if all(s in ("succeeded", "failed", "cancelled") for s in status.values()):
            break
        time.sleep(0.5)
    counts = Counter(status.values())
    return {"succeeded": counts["succeeded"], "statuses": counts, "status": status}
