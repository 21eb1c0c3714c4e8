"""Several processes calling init_db on one fresh SQLite file at the same moment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from registry import load_snapshot, make_engine
from registry.seed import load_seed

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 8

# Each child imports everything, reports ready, then waits for the go file so that all
# of them hit the fresh database within a millisecond or two of each other.
CHILD = r"""
import sys, time
from pathlib import Path
from registry import init_db, load_snapshot, make_engine

url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
deadline = time.monotonic() + 60
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.0005)
fresh_registry = make_engine(url)
init_db(fresh_registry, {"OPENAI_API_KEY": "sk-test"})
snap = load_snapshot(fresh_registry)
print(len(snap.models(enabled_only=False)), len(snap.backends()))
"""


def test_concurrent_init_db_on_fresh_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'router.db'}"
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, url, str(tmp_path / f"ready{i}"), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(PROCESSES)):
        assert time.monotonic() < deadline, "children never became ready"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    go.touch()

    seed = load_seed()
    expected = f"{len(seed.models)} {len(seed.backends)}"
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == expected

    fresh_registry = make_engine(url)
    snap = load_snapshot(fresh_registry)
    assert len(snap.models(enabled_only=False)) == len(seed.models)
    openai = snap.backend("openai")
    assert openai is not None and openai.enabled
    fresh_registry.dispose()
