"""What the router costs on top of the model: the same local SmolLM2 request run directly
in-process (baseline) and through the full stack (API under gunicorn -> Redis queue ->
Celery worker -> Redis Stream -> SSE, `irouter flower` idle beside it as `make run` starts
it), interleaved A B A B in one run.

    .venv/bin/python bench/pipeline.py [--requests 40] [--rounds 3] [--max-tokens 8]

Prints p50/p99 of time to first token and of total time for each path, and the router's
added time as the median of paired differences (the machine is shared and noisy: compare
within a run, not across runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from openai import OpenAI
from stack import Stack

from workers.local import LocalBackend
from workers.protocol import ChatJob, Chunk, Sampling

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def direct(backend: LocalBackend, max_tokens: int) -> tuple[float, float, str]:
    """Baseline: the model itself, no router."""
    job = ChatJob(
        id="bench",
        model="smollm2-135m",
        backend="local",
        kind="local",
        upstream_model="smollm2-135m",
        messages=PROMPT,
        sampling=Sampling(max_tokens=max_tokens, temperature=0),
    )
    start = time.perf_counter()
    first, parts = 0.0, []
    for item in backend.stream(job):
        if isinstance(item, Chunk):
            first = first or time.perf_counter() - start
            parts.append(item.delta)
    return first, time.perf_counter() - start, "".join(parts)


def routed(client: OpenAI, max_tokens: int) -> tuple[float, float, str]:
    """The same request through the whole stack, streamed with the OpenAI SDK."""
    start = time.perf_counter()
    first, parts = 0.0, []
    stream = client.chat.completions.create(
        model="smollm2-135m", messages=PROMPT, max_tokens=max_tokens, temperature=0, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - start
            parts.append(chunk.choices[0].delta.content)
    return first, time.perf_counter() - start, "".join(parts)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="per path per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()

    backend = LocalBackend.from_env(os.environ)
    with Stack() as stack:
        stack.worker("local-mps")
        client = OpenAI(base_url=stack.api() + "/v1", api_key="none", max_retries=0)
        stack.flower()  # beside the stack, idle, as `make run` starts it
        routed(client, args.max_tokens), direct(backend, args.max_tokens)  # warm both
        rows: dict[str, list[float]] = {k: [] for k in ("dt", "dT", "rt", "rT", "at", "aT")}
        for _ in range(args.rounds):
            for _ in range(args.requests):
                d, r = direct(backend, args.max_tokens), routed(client, args.max_tokens)
                assert d[2] == r[2], (d[2], r[2])  # same text both ways
                for key, value in zip(
                    rows, (d[0], d[1], r[0], r[1], r[0] - d[0], r[1] - d[1]), strict=True
                ):
                    rows[key].append(value)
    n = args.rounds * args.requests
    print(f"\n{n} requests per path, {args.max_tokens} tokens, interleaved, one run\n")
    print(f"{'':28}{'p50 ms':>10}{'p99 ms':>10}")
    labels = {
        "dt": "direct  time to first token",
        "rt": "router  time to first token",
        "dT": "direct  total",
        "rT": "router  total",
        "at": "added   time to first token",
        "aT": "added   total",
    }
    for key in ("dt", "rt", "at", "dT", "rT", "aT"):
        print(f"{labels[key]:28}{pct(rows[key], 50):10.1f}{pct(rows[key], 99):10.1f}")
    print(f"\nmedian added: {statistics.median(rows['aT']) * 1000:.1f} ms per request")


if __name__ == "__main__":
    main()
