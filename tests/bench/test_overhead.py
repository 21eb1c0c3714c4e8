"""bench/overhead.py still runs end to end: mock, the stack as `make run` starts it (Flower
and an idle local worker included), the load generator; a tiny sequential scenario through
the router must all succeed, and through the `--keys` column (an API key with limits on the
same stack) too, each request admitted, and its cost settled into the key's budget. Timings
are not asserted (they live in the README, measured by the benchmark itself)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_overhead_benchmark_runs_and_every_router_request_succeeds(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    args = ["--reps", "1", "--only", "1,2", "--scale", "0.1", "--soak", "0", "--shipped-only"]
    args += ["--keys", "--out", str(out)]
    run = subprocess.run(
        [sys.executable, "bench/overhead.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| latency p50 (ms) |" in run.stdout and "| TTFT p50 (ms) |" in run.stdout
    assert "API key with limits, over `router`: latency p50 " in run.stdout
    results = json.loads(out.read_text())
    for scenario, count in (("sequential", 30), ("streaming", 20)):
        for column in ("direct", "router", "router, key with limits"):
            (summary,) = results[scenario]["runs"][column]
            assert summary["ok"] == summary["sent"] == count, (scenario, column, summary)
    assert results["keys"]["spent_nusd"] > 0  # its requests were settled against its budget
