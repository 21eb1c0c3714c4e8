"""Fault injection with figures: every failure should end in a fast answer.

    .venv/bin/python bench/chaos.py [--only NAME] [--jobs N] [--root CHECKOUT]

`--root` runs the stack's processes from another checkout (a worktree of an older commit,
to show what a change fixed); this script and the venv stay this checkout's.

Scenarios, each on its own throwaway stack (AOF Redis, API under gunicorn, real workers;
provider upstreams are the test suite's fakes of the OpenAI API):

    sigkill       streaming jobs on the local model across 2 workers, one SIGKILLed and
                  replaced every few seconds; baseline: the same jobs with no kills
    primary-down  the primary upstream answers 503 (then refuses connections); every
                  request should be answered by the fallback model; baseline: the fallback
                  model asked directly
    redis-restart jobs submitted through POST /v1/jobs while Redis restarts; none accepted
                  may be lost; the 503 window is reported
    redis-restarts the same, Redis restarted 10 times, jobs flowing to a gevent provider
                  worker and a threads local worker; no worker may be restarted, none may
                  end stuck; how soon each queue is consumed again after each restart
    consumer-stall a gevent provider worker's consumer stranded in its read while Redis
                  answers the rest: its restart by the worker's consumer watch, no job lost
    slow-backend  one model on a slow and a fast deployment; share of requests each gets
                  under least-loaded, with priority as the baseline

The Redis scenarios (redis-restart, redis-restarts, consumer-stall) live in
bench/chaos_redis.py. tests/chaos/ runs the same scenarios, smaller, and asserts what
must always hold.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import chaos_base
from bench.chaos_base import FAST_HEARTBEAT, provider_stack
from bench.chaos_redis import consumer_stall, redis_restart
from bench.stack import ROOT, Stack, free_port
from tests.fakes.openai_api import start_openai_fake
from tests.fakes.server import Reply

PROMPTS = ["What is the capital of France?", "Name a primary color.", "Say hello.", "2+2="]


def pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` in ms (0 when empty)."""
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0] * 1000
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] * 1000


def client(api: str, timeout: float = 120) -> openai.OpenAI:
    return openai.OpenAI(base_url=api + "/v1", api_key="none", max_retries=0, timeout=timeout)


# -- sigkill -------------------------------------------------------------------------------
def _stream_job(c: openai.OpenAI, api: str, prompt: str) -> tuple[str, int, float]:
    """(text, attempts, seconds) of one greedy streaming job."""
    started = time.monotonic()
    raw = c.chat.completions.with_raw_response.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices)
    elapsed = time.monotonic() - started
    job = httpx.get(f"{api}/v1/jobs/{raw.headers['x-router-job-id']}", timeout=10).json()
    return text, int(job["attempt"]), elapsed


def _run_jobs(
    c: openai.OpenAI, api: str, jobs: int, clients: int
) -> list[tuple[str, str, int, float]]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(jobs)]
    with ThreadPoolExecutor(clients) as pool:
        done = pool.map(lambda p: (p, *_stream_job(c, api, p)), prompts)
        return list(done)


def sigkill(jobs: int = 200, kill_every: float = 4.0, clients: int = 8) -> dict[str, Any]:
    """Streaming jobs across 2 local workers while one is killed and replaced repeatedly."""
    # No admission control here: while a worker restarts, its jobs' waits would refuse new
    # ones, and this scenario measures what happens to every job that was let in.
    with Stack(
        chaos_base.STACK_ROOT, **FAST_HEARTBEAT, ROUTER_WORKER_WAIT="60", ROUTER_QUEUE_TIMEOUT="0"
    ) as stack:
        pids = [stack.worker("local-mps", "-c", "4") for _ in range(2)]
        api = stack.api()
        c = client(api)
        reference = {p: _stream_job(c, api, p)[0] for p in PROMPTS}
        baseline = _run_jobs(c, api, jobs, clients)
        kills, stop = [], threading.Event()

        def killer() -> None:
            while not stop.wait(kill_every):
                victim = random.choice(pids)
                stack.kill(victim)
                kills.append(time.monotonic())
                pids.remove(victim)
                pids.append(stack.worker("local-mps", "-c", "4"))

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        chaos = _run_jobs(c, api, jobs, clients)
        stop.set()
        thread.join()
    correct = sum(text == reference[p] for p, text, _, _ in chaos)
    return {
        "jobs": jobs,
        "kills": len(kills),
        "completed": correct,
        "max_restarts": max(a for _, _, a, _ in chaos) - 1,
        "restarted_jobs": sum(a > 1 for _, _, a, _ in chaos),
        "baseline_p50": pct([s for *_, s in baseline], 0.5),
        "baseline_p99": pct([s for *_, s in baseline], 0.99),
        "chaos_p50": pct([s for *_, s in chaos], 0.5),
        "chaos_p99": pct([s for *_, s in chaos], 0.99),
    }


# -- primary down ---------------------------------------------------------------------------
def _ask(c: openai.OpenAI, model: str) -> tuple[str, str, float]:
    """(answering model, backend, seconds) of one non-streaming request."""
    started = time.monotonic()
    raw = c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    body = raw.parse()
    return body.model, raw.headers["x-router-backend"], time.monotonic() - started


def primary_down(requests: int = 100, mode: str = "503", clients: int = 4) -> dict[str, Any]:
    """gpt-4o-mini (primary: openai) falls back to grok-3-mini while openai fails."""
    from registry.crud import set_model
    from registry.db import make_engine
    from tasks.connections import redis_client
    from tasks.health import BackendHealth, BreakerPolicy

    primary = start_openai_fake()
    fallback = start_openai_fake({"grok-3-mini": None})
    overloaded = {"message": "overloaded", "type": "server_error", "param": None, "code": None}
    primary.fail_next(*[Reply(503, {"error": overloaded})] * 100000)
    base = primary.url if mode == "503" else f"http://127.0.0.1:{free_port()}"
    with provider_stack() as stack:
        set_model(make_engine(stack.env["DATABASE_URL"]), "gpt-4o-mini", fallbacks=["grok-3-mini"])
        stack.worker(
            "openai,grok",
            env={"OPENAI_BASE_URL": base + "/v1", "XAI_BASE_URL": fallback.url + "/v1"},
        )
        api, health = stack.api(), BackendHealth(redis_client(stack.redis_url), BreakerPolicy())
        c = client(api)
        direct = [_ask(c, "grok-3-mini")[2] for _ in range(min(requests, 50))]
        results: list[tuple[str, str, float, str]] = []

        def one(_: int) -> None:
            state = health.states(["openai"])["openai"]
            results.append((*_ask(c, "gpt-4o-mini"), state))

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(requests)))
    primary.stop()
    fallback.stop()
    open_ = [s for _, _, s, state in results if state != "closed"]
    return {
        "mode": mode,
        "requests": requests,
        "by_fallback": sum(m == "grok-3-mini" and b == "grok" for m, b, _, _ in results),
        "primary_calls": len(primary.requests),
        "all_p50": pct([s for _, _, s, _ in results], 0.5),
        "all_p99": pct([s for _, _, s, _ in results], 0.99),
        "open_requests": len(open_),
        "open_p50": pct(open_, 0.5),
        "open_p99": pct(open_, 0.99),
        "direct_p50": pct(direct, 0.5),
        "direct_p99": pct(direct, 0.99),
    }


# -- slow backend ---------------------------------------------------------------------------
def slow_backend(requests: int = 120, clients: int = 12) -> dict[str, Any]:
    """gpt-4o-mini on openai (slow, 1.5 s) and grok (fast): shares under two policies."""
    from registry.crud import add_deployment, set_model
    from registry.db import make_engine

    slow = start_openai_fake()
    slow.latency = 1.5
    fast = start_openai_fake({"gpt-4o-mini": None})
    out: dict[str, Any] = {"requests": requests}
    with provider_stack() as stack:
        engine = make_engine(stack.env["DATABASE_URL"])
        add_deployment(engine, "gpt-4o-mini", "grok", upstream="gpt-4o-mini")
        stack.worker(
            "openai,grok",
            env={"OPENAI_BASE_URL": slow.url + "/v1", "XAI_BASE_URL": fast.url + "/v1"},
        )
        c = client(stack.api())
        for policy in ("priority", "least-loaded"):
            set_model(engine, "gpt-4o-mini", policy=policy)
            time.sleep(0.5)  # the API re-reads the registry
            with ThreadPoolExecutor(clients) as pool:
                got = list(pool.map(lambda _: _ask(c, "gpt-4o-mini"), range(requests)))
            shares = Counter(b for _, b, _ in got)
            out[policy] = {b: shares[b] for b in ("openai", "grok")}
            out[policy + "_p50"] = pct([s for _, _, s in got], 0.5)
    slow.stop()
    fast.stop()
    return out


SCENARIOS: dict[str, Callable[[int], dict[str, Any]]] = {
    "sigkill": lambda n: sigkill(jobs=n),
    "primary-down": lambda n: primary_down(requests=n),
    "primary-refused": lambda n: primary_down(requests=n, mode="refused"),
    "redis-restart": lambda n: redis_restart(),
    "redis-restarts": lambda n: redis_restart(restarts=10, rate=10.0, local_rate=0.5),
    "consumer-stall": lambda n: consumer_stall(),
    "slow-backend": lambda n: slow_backend(requests=n),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=sorted(SCENARIOS))
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--root", type=Path, default=ROOT, help="run the stack from here")
    args = parser.parse_args()
    chaos_base.STACK_ROOT = args.root.resolve()
    for name, run in SCENARIOS.items():
        if args.only and name != args.only:
            continue
        result = run(args.jobs)
        print(f"\n## {name}")
        for key, value in result.items():
            digits = 1 if key.endswith("_s") else 0  # seconds to a tenth, the rest whole
            shown = f"{value:.{digits}f}" if isinstance(value, float) else value
            print(f"  {key:16} {shown}")


if __name__ == "__main__":
    main()
