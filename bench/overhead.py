"""What the router itself costs: the same requests sent straight to a mock upstream and
through the whole stack exactly as `make run` starts it (API under gunicorn, `irouter
providers`, Redis, and beside them an idle local worker with SmolLM2 loaded and `irouter
flower`), next to the same stack while someone has Flower's dashboard open (task events
on) and a stripped stack without Flower and the local worker; optionally through LiteLLM's
proxy in front of the same mock. Columns run interleaved in one run (A B A B …, rotated
each repetition); figures are medians of the repetitions, and "added" is the median of
same-repetition differences from direct.

    .venv/bin/python bench/overhead.py [--reps 3] [--litellm-venv DIR] [--soak 600]
        [--only 1,2,3,4,5] [--scale 1.0] [--rates 100,250,500] [--shipped-only]
        [--compare GIT-REF] [--keys] [--out results.json]

Scenarios: (1) sequential non-stream, latency 0, 16 tokens, 300 requests; (2) sequential
stream, TTFT 20 ms, 64 tokens 5 ms apart, 200 requests; (3) open loop, latency 1.5 s,
16 tokens, 30 s at each rate, a 30 s client timeout (sent as `x-request-timeout`): ok %,
goodput, latency, and the share refused at once (503) or timed out; (4) closed loop,
64 clients, latency 0; (5) RSS of the API and provider worker at start, after (3), and
through a soak at 100 req/s. `--scale` shrinks request counts and durations (for a quick
look; the published figures use 1.0). The mock is registered as model `mock` on the
`openai` backend (OPENAI_BASE_URL points the provider worker at it). `--compare REF` adds
a column `router@REF`: a second stack running that commit's code (from a git worktree), so
a change is measured against its parent in the same run, on the same noisy machine.
`--keys` adds a column `router, key with limits`: a second API on the same stack (the same
Redis, workers and mock) whose registry holds one API key with RPM, TPM, max-parallel and a
budget far above any load here, sent by every request. So each request pays what a key
costs (authentication, the admission script, the x-ratelimit-* headers, the settle, fair
dispatch with a max-parallel) and none is refused; the report adds what that costs over
`router` (no key: auth open, as a loopback `make run` without keys).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from stack import ROOT, Stack, _answers, _wait, free_port

LOAD = [sys.executable, str(ROOT / "bench" / "load.py"), "--json"]
FAST = {"latency_ms": 0, "tokens": 16, "interval_ms": 0}
STREAM = {"latency_ms": 20, "tokens": 64, "interval_ms": 5}
SLOW = {"latency_ms": 1500, "tokens": 16, "interval_ms": 0}
KEY = "sk-bench"
FLOWER_IDLE = 5.0  # seconds after the last look at Flower until task events go off
KEYED = "router, key with limits"
#: The --keys column's key: limits no load here reaches, so that every request is admitted
#: and pays for it. The budget never resets (`total`), so the run's spend can be read back.
KEY_RPM, KEY_TPM, KEY_PARALLEL, KEY_BUDGET = 10**7, 10**12, 10**4, 10.0**6
#: target name -> the API key its load sends (the others send load.py's default, ignored)
SECRETS: dict[str, str] = {}


# -- the processes --------------------------------------------------------------------------
class Mock:
    def __init__(self, stack: Stack) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        stack.spawn(
            "mock", [sys.executable, str(ROOT / "bench" / "mock_upstream.py"), "--port", port]
        )
        _wait(lambda: _answers(self.url + "/v1/models"), 30, "the mock upstream")

    def set(self, knobs: dict[str, float]) -> None:
        httpx.post(self.url + "/mock/config", json=knobs, timeout=5).raise_for_status()


def start_litellm(stack: Stack, venv: Path, mock: Mock) -> str:
    """LiteLLM's proxy (one process, as its quickstart runs it) in front of the mock."""
    port = free_port()
    config = stack.tmp / "litellm.yaml"
    params = f"model: openai/mock, api_base: {mock.url}/v1, api_key: {KEY}"
    config.write_text(f"model_list:\n  - model_name: mock\n    litellm_params: {{{params}}}\n")
    env = {"LITELLM_MASTER_KEY": KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env |= {"DATABASE_URL": None, "REDIS_URL": None}  # ours, not LiteLLM's
    args = [str(venv / "bin" / "litellm"), "--config", str(config), "--port", str(port)]
    stack.spawn("litellm", [*args, "--host", "127.0.0.1"], env)
    url = f"http://127.0.0.1:{port}"
    _wait(lambda: _answers(url + "/health/liveliness"), 120, "LiteLLM")
    return url + "/v1"


def start_router(stack: Stack, mock: Mock, shipped: bool = True) -> tuple[str, list[int]]:
    """Register the mock and start the stack: the provider worker and the API, and, as
    `make run` ships it (`shipped`), an idle local worker with its model loaded and Flower
    beside them; (base url, pids of the API and the provider worker)."""
    from registry.crud import add_model
    from registry.db import make_engine

    add_model(make_engine(stack.env["DATABASE_URL"]), "mock", "openai", context_window=32768)
    worker = stack.providers({"OPENAI_BASE_URL": mock.url + "/v1"})
    api = stack.api(2)
    pids = [worker, stack.procs[-1].pid]
    if shipped:
        stack.worker("local-mps", "-l", "info")  # as the Procfile's `worker`
        stack.flower_url = stack.flower(FLOWER_IDLE)
    return api + "/v1", pids


def start_keyed_api(stack: Stack) -> str:
    """A second API on `stack` on a registry of its own, holding the mock (priced) and one
    API key with KEY_LIMITS, which auth (ROUTER_AUTH=auto) then requires; its base url.
    The key goes in SECRETS[KEYED]."""
    from registry.apikeys import create_key
    from registry.crud import add_model
    from registry.db import init_db, make_engine

    db_url = f"sqlite:///{stack.tmp / 'keys.db'}"
    engine = make_engine(db_url)
    init_db(engine, stack.env)
    # priced (USD per 1M tokens), so that the budget has a worst case to reserve and settle
    add_model(engine, "mock", "openai", context_window=32768, input_price=0.15, output_price=0.6)
    _, SECRETS[KEYED] = create_key(
        engine,
        "bench",
        rpm=KEY_RPM,
        tpm=KEY_TPM,
        max_parallel=KEY_PARALLEL,
        budget_usd=KEY_BUDGET,
        budget_period="total",
    )
    return stack.api(2, name="api-keys", env={"DATABASE_URL": db_url}) + "/v1"


def check_keyed(url: str) -> None:
    """The keyed API requires its key, and admits a request of it with the limits' headers."""
    body = {"model": "mock", "messages": [{"role": "user", "content": "Hi"}]}
    anyone = httpx.post(url + "/chat/completions", json=body, timeout=30)
    auth = {"Authorization": f"Bearer {SECRETS[KEYED]}"}
    keyed = httpx.post(url + "/chat/completions", json=body, headers=auth, timeout=30)
    if anyone.status_code != 401 or keyed.status_code != 200:
        raise RuntimeError(f"keyed API: {anyone.status_code} without the key, {keyed.text}")
    if keyed.headers.get("x-ratelimit-limit-requests") != str(KEY_RPM):
        raise RuntimeError(f"keyed API: no x-ratelimit-* headers: {dict(keyed.headers)}")


def key_spend(stack: Stack) -> dict[str, int]:
    """What the key spent (settled) and still holds reserved, in nano-USD."""
    import redis

    from tasks.tenants import Tenants

    spent, reserved = Tenants(redis.Redis.from_url(stack.redis_url)).spend("bench", "total")
    return {"spent_nusd": spent, "reserved_nusd": reserved}


class Watcher:
    """Someone with Flower's dashboard open: it reloads `/workers?json=1` every second, as
    the dashboard page does, which keeps the workers' task events on."""

    def __init__(self, flower_url: str) -> None:
        self.url, self._stop = flower_url + "/workers?json=1", threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self._stop.wait(1.0):
                with contextlib.suppress(httpx.HTTPError):
                    http.get(self.url)

    def stop(self) -> None:
        self._stop.set()


def start_worktree(ref: str) -> Path:
    """A detached git worktree of `ref` in a temp directory."""
    tree = Path(tempfile.mkdtemp(prefix="irouter-ref-")) / "tree"
    git = ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref]
    subprocess.run(git, check=True, capture_output=True)
    return tree


def rss_mb(pids: list[int]) -> float:
    """Resident memory of these processes and all their children, in MB."""
    total = 0
    for pid in pids:
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            total += p.memory_info().rss
    return round(total / 2**20, 1)


# -- running load ---------------------------------------------------------------------------
def load(url: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([*LOAD, "--base-url", url, *args], capture_output=True, check=False)
    if out.returncode not in (0, 1):
        raise RuntimeError(out.stderr.decode()[-2000:])
    return dict(json.loads(out.stdout))


def interleaved(
    targets: dict[str, str], reps: int, *args: str, more: dict[str, list[str]] | None = None
) -> dict[str, list[dict]]:
    """Each target once per repetition, the order rotated, so drift hits all alike;
    `more`: extra load arguments for some targets."""
    names = list(targets)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            key = ["--api-key", SECRETS[name]] if name in SECRETS else []
            runs[name].append(load(targets[name], *args, *key, *(more or {}).get(name, [])))
    return runs


def get(summary: dict, path: str) -> float:
    value: Any = summary
    for part in path.split("."):
        value = value[part]
    return float(value) if value is not None else float("nan")


def median(runs: list[dict], path: str) -> float:
    return statistics.median(get(r, path) for r in runs)


def added(runs: dict[str, list[dict]], name: str, path: str, base: str = "direct") -> float:
    """Median over repetitions of (name - base) in the same repetition."""
    pairs = zip(runs[name], runs[base], strict=True)
    return statistics.median(get(a, path) - get(b, path) for a, b in pairs)


# -- scenarios ------------------------------------------------------------------------------
def scenario_sequential(mock: Mock, targets: dict[str, str], reps: int, n: int) -> dict:
    mock.set(FAST)
    runs = interleaved(targets, reps, "--requests", str(n), "--warmup", "20")
    return {"runs": runs, "rows": _rows(runs, "latency_ms", "latency")}


def scenario_streaming(mock: Mock, targets: dict[str, str], reps: int, n: int) -> dict:
    mock.set(STREAM)
    runs = interleaved(targets, reps, "--stream", "--requests", str(n), "--warmup", "10")
    return {"runs": runs, "rows": _rows(runs, "ttft_ms", "TTFT")}


def _rows(runs: dict[str, list[dict]], metric: str, label: str) -> list[list[str]]:
    rows = []
    for q in ("p50", "p99"):
        path = f"{metric}.{q}"
        row = [f"{label} {q} (ms)"]
        for name in runs:
            cell = f"{median(runs[name], path):.1f}"
            if name != "direct":
                cell += f" (+{added(runs, name, path):.1f})"
            row.append(cell)
        rows.append(row)
    return rows


def scenario_open(
    mock: Mock, targets: dict[str, str], reps: int, duration: float, rates: list[int]
) -> dict:
    mock.set(SLOW)
    out: dict[str, Any] = {"runs": {}, "rows": []}
    for rate in rates:
        args = ("--rate", str(rate), "--duration", str(duration), "--timeout", "30")
        runs = interleaved(targets, reps, *args)
        out["runs"][rate] = runs
        row = [f"{rate} req/s offered: ok %, req/s, p50/p99 (s); refused %, timed out %"]
        for name in runs:
            ok = median(runs[name], "success_pct")
            rps = median(runs[name], "steady_rps")
            p50 = median(runs[name], "latency_ms.p50") / 1000
            p99 = median(runs[name], "latency_ms.p99") / 1000
            refused = median(runs[name], "refused_pct")
            timeouts = median(runs[name], "timeout_pct")
            cell = f"{ok:.1f}%, {rps:.0f}, {p50:.2f}/{p99:.2f}; {refused:.1f}%, {timeouts:.1f}%"
            row.append(cell)
        out["rows"].append(row)
    return out


def scenario_closed(mock: Mock, targets: dict[str, str], reps: int, n: int) -> dict:
    mock.set(FAST)
    counts = {name: str(n * 10 if name == "direct" else n) for name in targets}
    more = {name: ["--requests", count] for name, count in counts.items()}  # direct: ~20x faster
    runs = interleaved(targets, reps, "--concurrency", "64", "--warmup", "64", more=more)
    row = ["closed loop, 64 clients: req/s"]
    for name in runs:
        row.append(f"{median(runs[name], 'throughput_rps'):.0f}")
    return {"runs": runs, "rows": [row]}


def soak(
    mock: Mock, url: str, pids: list[int], seconds: float, every: float
) -> tuple[list[tuple[float, float]], dict[str, Any]]:
    """Open loop at 100 req/s for `seconds`; (RSS samples (s, MB) every `every` s, summary)."""
    mock.set(SLOW)
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        start = time.monotonic()
        while not done.wait(every):
            samples.append((round(time.monotonic() - start), rss_mb(pids)))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    result = load(url, "--rate", "100", "--duration", str(seconds), "--timeout", "30")
    done.set()
    t.join()
    return samples, result


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of RSS over time."""
    xs, ys = [s[0] / 60 for s in samples], [s[1] for s in samples]
    if len(xs) < 2:
        return 0.0
    return statistics.linear_regression(xs, ys).slope


# -- report ---------------------------------------------------------------------------------
def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--litellm-venv", type=Path, default=None)
    p.add_argument("--soak", type=float, default=600, help="seconds; 0 to skip")
    p.add_argument("--only", default="1,2,3,4,5")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--rates", default="100,250,500")
    p.add_argument("--open-reps", type=int, default=0, help="repetitions of (3); 0: --reps")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--compare", default=None, help="a git ref to run beside this checkout")
    p.add_argument(
        "--shipped-only",
        action="store_true",
        help="only the stack as make run starts it (no Flower-watched and stripped columns)",
    )
    p.add_argument(
        "--keys",
        action="store_true",
        help=f"add a column `{KEYED}`: what an API key with limits costs over `router`",
    )
    args = p.parse_args()
    only = {int(x) for x in args.only.split(",")}
    scale = args.scale
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    with contextlib.ExitStack() as stacks:
        stack = stacks.enter_context(Stack(OPENAI_API_KEY=KEY))
        mock = Mock(stack)
        router, pids = start_router(stack, mock)
        targets = {"direct": mock.url + "/v1", "router": router}
        if not args.shipped_only:
            watched = stacks.enter_context(Stack(OPENAI_API_KEY=KEY))
            targets["router, Flower watched"] = start_router(watched, mock)[0]
            stacks.callback(Watcher(watched.flower_url).stop)
            bare = stacks.enter_context(Stack(OPENAI_API_KEY=KEY))
            targets["router, no Flower or local worker"] = start_router(bare, mock, False)[0]
        if args.compare:
            tree = start_worktree(args.compare)
            stacks.callback(
                subprocess.run,
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                check=False,
            )
            other = stacks.enter_context(Stack(root=tree, OPENAI_API_KEY=KEY))
            targets[f"router@{args.compare}"] = start_router(other, mock)[0]
        if args.keys:
            targets[KEYED] = start_keyed_api(stack)
        if args.litellm_venv:
            targets["litellm"] = start_litellm(stack, args.litellm_venv, mock)
        mock.set(FAST)
        load(router, "--requests", "50")
        if args.keys:
            check_keyed(targets[KEYED])
            load(targets[KEYED], "--requests", "50", "--api-key", SECRETS[KEYED])
        rows: list[list[str]] = []
        memory: dict[str, Any] = {"start": rss_mb(pids)}
        if 1 in only:
            results["sequential"] = scenario_sequential(mock, targets, args.reps, int(300 * scale))
            rows += results["sequential"]["rows"]
        if 2 in only:
            results["streaming"] = scenario_streaming(mock, targets, args.reps, int(200 * scale))
            rows += results["streaming"]["rows"]
        if 3 in only:
            rates = [int(r) for r in args.rates.split(",")]
            reps = args.open_reps or args.reps
            results["open"] = scenario_open(mock, targets, reps, 30 * scale, rates)
            rows += results["open"]["rows"]
            memory["after_open_loop"] = rss_mb(pids)
        if 4 in only:
            results["closed"] = scenario_closed(mock, targets, args.reps, int(2000 * scale))
            rows += results["closed"]["rows"]
        if 5 in only and args.soak:
            every = max(5.0, args.soak * scale / 20)
            points, soak_result = soak(mock, router, pids, args.soak * scale, every)
            memory["soak"] = {"samples": points, "result": soak_result}
            memory["soak_slope_mb_per_min"] = round(slope_mb_per_min(points), 2)
        results["memory"] = memory
        if args.keys:
            results["keys"] = key_spend(stack)
    header = ["scenario", *targets]
    print(table(header, rows))
    print()
    if args.keys:
        print(key_lines(results))
    print(memory_lines(memory))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))


def key_lines(results: dict[str, Any]) -> str:
    """What the key with limits added over `router` (no key), as medians of same-repetition
    differences, and what the key spent."""
    parts = []
    for scenario, metric in (("sequential", "latency_ms"), ("streaming", "ttft_ms")):
        if scenario in results:
            runs = results[scenario]["runs"]
            for q in ("p50", "p99"):
                diff = added(runs, KEYED, f"{metric}.{q}", "router")
                parts.append(f"{metric.removesuffix('_ms')} {q} {diff:+.2f} ms")
    spend = results["keys"]
    return (
        f"API key with limits, over `router`: {', '.join(parts) or 'no latency scenario'}; "
        f"the key spent {spend['spent_nusd'] / 1e9:.6f} USD, "
        f"{spend['reserved_nusd']} nano-USD left reserved"
    )


def memory_lines(memory: dict[str, Any]) -> str:
    """RSS of the API (gunicorn master and workers) and the provider worker, in MB."""
    parts = [f"RSS API+worker: start {memory['start']} MB"]
    if "after_open_loop" in memory:
        grow = 100 * (memory["after_open_loop"] / memory["start"] - 1)
        parts.append(f"after open loop {memory['after_open_loop']} MB ({grow:+.1f}%)")
    if "soak" in memory:
        points = memory["soak"]["samples"]
        ok = memory["soak"]["result"]["success_pct"]
        first, last = points[0][1], points[-1][1]
        parts.append(
            f"soak {points[-1][0]:.0f} s at 100 req/s ({ok}% ok): {first} -> {last} MB, "
            f"slope {memory['soak_slope_mb_per_min']:+.2f} MB/min"
        )
    return "; ".join(parts)


if __name__ == "__main__":
    main()
