"""Redis-side chaos: Redis restarted while jobs flow, and a consumer stranded in its read
while Redis answers the rest (bench/stall_proxy.py). Run from bench/chaos.py."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import httpx
import redis

from bench.chaos_base import finish_all, provider_stack
from bench.stack import Stack
from bench.stall_proxy import StallProxy
from tests.fakes.openai_api import start_openai_fake


# -- redis restarts -------------------------------------------------------------------------
def redis_restart(
    restarts: int = 1,
    every: float = 6.0,
    rate: float = 20.0,
    local_rate: float = 0.0,
    down: float = 1.0,
    finish: float = 120.0,
) -> dict[str, Any]:
    """POST /v1/jobs at `rate`/s to a gevent provider worker (and at `local_rate`/s to a
    threads worker on the local model) while Redis is restarted `restarts` times, `every`
    seconds apart. No worker is restarted: every accepted job must complete on the workers
    that were there (within `finish` s of the last post), and each worker must still serve
    its queues at the end. Figures per queue: `grok` (provider) and `local` (local-mps)."""
    upstream = start_openai_fake({"grok-3-mini": None})
    upstream.latency = 0.3
    models = {"grok-3-mini": "grok", "smollm2-135m": "local"}
    with provider_stack(ROUTER_QUEUE_TIMEOUT="0") as stack:
        workers = [stack.worker("grok", env={"XAI_BASE_URL": upstream.url + "/v1"})]
        if local_rate:
            workers.append(stack.worker("local-mps", "-c", "2"))
        api = stack.api()
        load = _Poster(api, {"grok-3-mini": rate, "smollm2-135m": local_rate})
        load.start()
        back: list[float] = []  # wall-clock times Redis answered again
        for _ in range(restarts):
            time.sleep(every)
            stack.restart_redis(down)
            back.append(time.time())
        time.sleep(every)
        load.stop()
        with httpx.Client(base_url=api, timeout=10) as http:
            final = finish_all(http, list(load.accepted), timeout=finish)
        resumed = _resumed_after(stack, back)
        stuck = _stuck_workers(stack, workers)
        waiting = _backlog(stack, ["grok", "local-mps"])
        logs = [stack.log(pid).read_text() for pid in workers]
    upstream.stop()
    out: dict[str, Any] = {"restarts": restarts, "accepted": len(load.accepted)}
    for model, name in models.items():
        ids = [j for j, m in load.accepted.items() if m == model]
        done = sum(final["status"][j] == "succeeded" for j in ids)
        out |= {f"accepted_{name}": len(ids), f"lost_{name}": len(ids) - done}
    out |= {
        "refused": len(load.refused),
        "succeeded": final["succeeded"],
        "lost": len(load.accepted) - final["succeeded"],
        "statuses": dict(final["statuses"]),
        "window_503_ms": _longest_window(load.refused) * 1000,
    }
    for queue, name in (("grok", "grok"), ("local-mps", "local")):
        out[f"waiting_{name}"] = waiting[queue]  # of the lost: still in line (a slow worker)
        times = resumed.get(queue, [])
        out[f"resumed_{name}_p50_s"] = statistics.median(times) if times else 0.0
        out[f"resumed_{name}_max_s"] = max(times) if times else 0.0
    out |= {
        "consumer_kicks": sum(log.count("dropping its broker connection") for log in logs),
        "consumer_exits": sum(log.count("; exiting") for log in logs),
        "stuck_workers": stuck,
    }
    return out


class _Poster:
    """POST /v1/jobs for each model at its rate, one thread per model, until `stop`."""

    def __init__(self, api: str, rates: dict[str, float]) -> None:
        self.api, self.rates = api, {m: r for m, r in rates.items() if r}
        self.accepted: dict[str, str] = {}  # job id -> model
        self.refused: list[float] = []  # monotonic times of posts that got no 202
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._post, args=(m,)) for m in self.rates]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _post(self, model: str) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        with httpx.Client(base_url=self.api, timeout=10) as http:
            while not self._stop.is_set():
                now = time.monotonic()
                try:
                    r = http.post("/v1/jobs", json=body)
                except httpx.HTTPError:
                    r = None
                if r is not None and r.status_code == 202:
                    self.accepted[r.json()["id"]] = model
                else:
                    self.refused.append(time.monotonic())
                self._stop.wait(max(0.0, 1 / self.rates[model] - (time.monotonic() - now)))


def _longest_window(times: list[float], gap: float = 0.5) -> float:
    """The longest run of `times` with no gap over `gap` seconds (one outage's 503s)."""
    longest, first, last = 0.0, None, None
    for t in sorted(times):
        if last is None or t - last > gap:
            first = t
        last = t
        longest = max(longest, t - (first or t))
    return longest


def _resumed_after(stack: Stack, back: list[float]) -> dict[str, list[float]]:
    """Per queue, for each restart: seconds from Redis answering again to the first job a
    worker started after it (job hashes carry Redis's clock, which is this machine's)."""
    r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    started: dict[str, list[float]] = {}
    for key in r.scan_iter("router:job:*", count=1000):
        if key.count(":") != 2:
            continue  # a job's stream, not its hash
        queue, at = r.hmget(key, "queue", "started")
        if queue and at:
            started.setdefault(queue, []).append(float(at))
    out: dict[str, list[float]] = {}
    for queue, times in started.items():
        times.sort()
        for t in back:
            after = [s for s in times if s >= t]
            if after:
                out.setdefault(queue, []).append(after[0] - t)
    return out


def _backlog(stack: Stack, queues: list[str]) -> dict[str, int]:
    """Jobs still queued per queue, in their backlog index (waiting for a worker), at the end."""
    from tasks.keys import queued_key

    r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    return {q: int(r.zcard(queued_key(q))) for q in queues}


def _stuck_workers(stack: Stack, pids: list[int]) -> int:
    """Workers that exited, or whose heartbeat no longer announces the queues they
    consume (a stalled consumer is announced on none, tasks/consumer.py)."""
    from tasks.liveness import Liveness

    lv = Liveness(redis.Redis.from_url(stack.redis_url, decode_responses=True))
    now = lv.server_time()
    live = {
        w.get("pid"): w
        for w in lv.workers()
        if float(w["alive_until"]) > now and w.get("queues") and not w.get("consumer")
    }
    return sum(not stack.running(pid) or str(pid) not in live for pid in pids)


# -- consumer stall -------------------------------------------------------------------------
def consumer_stall(jobs: int = 20, every: float = 1.0) -> dict[str, Any]:
    """A gevent provider worker whose consumer is stranded in its read while Redis answers
    everything else (bench/stall_proxy.py), then `jobs` posted `every` s: the worker's
    consumer watch (tasks/consumer.py) must restart the consumer, with no worker restarted,
    and every accepted job complete."""
    upstream = start_openai_fake({"grok-3-mini": None})
    body = {"model": "grok-3-mini", "messages": [{"role": "user", "content": "hi"}]}
    with provider_stack() as stack, StallProxy(_port(stack.redis_url)) as proxy:
        env = {
            "XAI_BASE_URL": upstream.url + "/v1",
            "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0",
        }
        pid = stack.worker("grok", env=env)
        with httpx.Client(base_url=stack.api(), timeout=30) as http:
            warm = http.post("/v1/jobs", json=body).json()["id"]
            finish_all(http, [warm], timeout=30)
            stranded, stalled = proxy.stall(), time.monotonic()
            accepted, refused = [], 0
            for _ in range(jobs):
                r = http.post("/v1/jobs", json=body)
                if r.status_code == 202:
                    accepted.append(r.json()["id"])
                else:
                    refused += 1
                time.sleep(every)
            final = finish_all(http, accepted, timeout=90)
            done = time.monotonic() - stalled
        log = stack.log(pid).read_text()
        stuck = _stuck_workers(stack, [pid])
    upstream.stop()
    return {
        "stranded_connections": stranded,
        "accepted": len(accepted),
        "refused": refused,
        "succeeded": final["succeeded"],
        "lost": len(accepted) - final["succeeded"],
        "consumer_kicks": log.count("dropping its broker connection"),
        "consumer_resumed": log.count("consumer polling its queues again"),
        "consumer_exits": log.count("; exiting"),
        "stuck_workers": stuck,
        "stall_to_all_done_s": done,
    }


def _port(redis_url: str) -> int:
    return int(redis_url.rsplit(":", 1)[1].split("/")[0])
