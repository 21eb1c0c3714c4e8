"""Load generator for any OpenAI-compatible `/v1/chat/completions` (aiohttp, one process).

    # closed loop: C clients, each sends its next request when its last one returns
    .venv/bin/python bench/load.py --base-url http://127.0.0.1:8000/v1 --concurrency 1 \
        --requests 300
    # open loop: a fixed arrival rate; overload shows as latency and failures
    .venv/bin/python bench/load.py --base-url ... --rate 250 --duration 30
    # streaming also measures time to first token (the first non-empty content delta)
    .venv/bin/python bench/load.py --base-url ... --stream --requests 200 [--json]

A request is ok when it returns 200 with non-empty content (streaming: a content delta and
`data: [DONE]`). Latency is over ok requests; in open loop it is measured from the
*scheduled* send time, so a target that falls behind shows it (no coordinated omission).
Every request says how long the client waits (`x-request-timeout`, the --timeout), so a
router can refuse at once what it could not answer in time; such refusals (429, 503) are
counted apart from timeouts, with their own latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np


@dataclass
class Result:
    status: str
    latency: float
    ttft: float | None
    done_at: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="OpenAI-compatible chat completions load generator")
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--rate", type=float, default=None, help="open loop: requests/s")
    p.add_argument("--duration", type=float, default=10.0, help="open loop: seconds")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--model", default="mock")
    p.add_argument("--api-key", default="sk-bench")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


async def one(
    session: aiohttp.ClientSession, url: str, body: bytes, stream: bool, sched: float | None
) -> Result:
    t0 = sched if sched is not None else time.perf_counter()
    ttft, status = None, "ok"
    try:
        async with session.post(url, data=body) as r:
            if r.status != 200:
                await r.read()
                status = str(r.status)
            elif not stream:
                data = json.loads(await r.read())
                if not data["choices"][0]["message"]["content"]:
                    status = "bad_response"
            else:
                done = False
                async for line in r.content:  # to EOF, so the connection is reused
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        continue
                    for ch in json.loads(payload).get("choices") or ():
                        if ttft is None and (ch.get("delta") or {}).get("content"):
                            ttft = time.perf_counter() - t0
                if not done or ttft is None:
                    status = "bad_stream"
    except TimeoutError:
        status = "timeout"
    except aiohttp.ClientError as exc:
        status = type(exc).__name__
    except (ValueError, KeyError, IndexError, TypeError):
        status = "bad_response"
    done_at = time.perf_counter()
    return Result(status, done_at - t0, ttft, done_at)


async def closed_loop(
    session: aiohttp.ClientSession, url: str, body: bytes, stream: bool, n: int, c: int
) -> list[Result]:
    results: list[Result] = []
    todo = iter(range(n))

    async def client() -> None:
        for _ in todo:  # shared: exactly n requests in all
            results.append(await one(session, url, body, stream, None))

    await asyncio.gather(*(client() for _ in range(max(1, min(c, n)))))
    return results


async def open_loop(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    stream: bool,
    rate: float,
    duration: float,
    t0: float,
) -> list[Result]:
    tasks = []
    for i in range(round(rate * duration)):
        target = t0 + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(session, url, body, stream, target)))
    return list(await asyncio.gather(*tasks))


#: Statuses of requests refused for overload (fast, with Retry-After), not failed.
REFUSED = ("429", "503")


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 3) if values else None


def summarize(args: argparse.Namespace, results: list[Result], t0: float) -> dict[str, Any]:
    ok = [r for r in results if r.status == "ok"]
    lat = [r.latency for r in ok]
    end = max([r.done_at for r in results] or [t0])
    summary: dict[str, Any] = {
        "sent": len(results),
        "ok": len(ok),
        "success_pct": round(100.0 * len(ok) / max(len(results), 1), 2),
        "errors": dict(Counter(r.status for r in results if r.status != "ok")),
        "throughput_rps": round(len(ok) / max(end - t0, 1e-9), 1),
        "latency_ms": {"p50": pct(lat, 50), "p99": pct(lat, 99)},
    }
    refused = [r.latency for r in results if r.status in REFUSED]
    summary["refused_pct"] = round(100.0 * len(refused) / max(len(results), 1), 2)
    summary["refused_ms"] = {"p50": pct(refused, 50), "p99": pct(refused, 99)}
    timeouts = sum(1 for r in results if r.status == "timeout")
    summary["timeout_pct"] = round(100.0 * timeouts / max(len(results), 1), 2)
    if args.rate:
        half = args.duration / 2
        steady = sum(1 for r in ok if t0 + half <= r.done_at <= t0 + args.duration)
        summary["steady_rps"] = round(steady / half, 1)
    if args.stream:
        ttft = [r.ttft for r in ok if r.ttft is not None]
        summary["ttft_ms"] = {"p50": pct(ttft, 50), "p99": pct(ttft, 99)}
    return summary


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = args.base_url.rstrip("/") + "/chat/completions"
    req: dict[str, Any] = {"model": args.model, "messages": [{"role": "user", "content": "Hi"}]}
    if args.stream:
        req["stream"] = True
    body = json.dumps(req).encode()
    limit = 0 if args.rate else max(args.concurrency, 1)  # 0: unlimited
    conn = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=None)
    headers = {
        "Authorization": "Bearer " + args.api_key,
        "Content-Type": "application/json",
        "x-request-timeout": f"{args.timeout:g}",  # the patience a router may plan with
    }
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=conn, headers=headers, timeout=timeout) as s:
        if args.warmup:
            await closed_loop(s, url, body, args.stream, args.warmup, args.concurrency)
        t0 = time.perf_counter()
        if args.rate:
            results = await open_loop(s, url, body, args.stream, args.rate, args.duration, t0)
        else:
            n, c = args.requests, args.concurrency
            results = await closed_loop(s, url, body, args.stream, n, c)
    return summarize(args, results, t0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    summary = asyncio.run(run(args))
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
