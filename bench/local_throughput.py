"""Local worker throughput: N concurrent streaming requests through the full stack (API ->
queue -> batching worker -> stream, `irouter flower` idle beside it as `make run` starts it)
against the same model driven directly with `model.generate`, one request at a time, in
the same run.

    .venv/bin/python bench/local_throughput.py [--concurrency 8] [--tokens 128]
        [--rss-requests 500] [--skip-precisions] [--skip-rss]

Prints: the one-at-a-time baseline; one request through the stack (tok/s, TTFT against the
bare prefill time); N concurrent through the stack (aggregate and per-request tok/s, TTFT
p50/p99, ratio to the baseline); each LOCAL_DTYPE's single-stream tok/s next to llama.cpp
on the same GGUF (when llama_cpp is installed) with the share of prompts whose first 32
greedy tokens match float32; the worker's RSS over sequential requests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import torch
from openai import OpenAI
from stack import Stack

from workers.local.loading import default_model_ref, load

PROMPTS = [
    "Write a long story about a dragon who learns to paint.",
    "Write a long poem about the sea and the sky.",
    "Explain in detail how a steam engine works.",
    "Describe a day in the life of a medieval blacksmith.",
    "Write a long letter to a friend about your travels in Japan.",
    "Explain the history of the printing press in detail.",
    "Write a detailed recipe for a three-course French dinner.",
    "Describe the life cycle of a star, step by step.",
]
QUALITY_PROMPTS = [*PROMPTS, *(f"Tell me about {t}." for t in (
    "volcanoes", "the Roman empire", "photosynthesis", "jazz music",
    "the moon landing", "honeybees", "chess openings", "the Amazon river",
))]  # fmt: skip
CACHE = Path("~/.cache/inference-router/models").expanduser()


def chat_ids(tokenizer: Any, text: str) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=False
    )
    return torch.tensor([ids])


def bare(model: Any, tokenizer: Any, prompts: list[str], tokens: int) -> dict[str, float]:
    """model.generate one request at a time (greedy): tok/s and the prefill time."""
    produced, busy, prefills = 0, 0.0, []
    with torch.inference_mode():
        for text in prompts:
            ids = chat_ids(tokenizer, text)
            start = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)  # as generate's own prefill does
            prefills.append(time.perf_counter() - start)
            start = time.perf_counter()
            out = model.generate(ids, max_new_tokens=tokens, do_sample=False)
            busy += time.perf_counter() - start
            produced += out.shape[1] - ids.shape[1]
    return {"tok_s": produced / busy, "prefill_ms": statistics.median(prefills) * 1000}


def stream_one(client: OpenAI, text: str, tokens: int) -> dict[str, float]:
    start = time.perf_counter()
    first = last = 0.0
    usage = 0
    stream = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": text}],
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter() - start
            first = first or last
        if chunk.usage:
            usage = chunk.usage.completion_tokens
    total = time.perf_counter() - start
    return {"ttft": first, "total": total, "tokens": usage, "decode_s": max(last - first, 1e-9)}


def through_stack(client: OpenAI, prompts: list[str], tokens: int, concurrent: bool) -> dict:
    results: list[dict[str, float]] = []

    def run(text: str) -> None:
        results.append(stream_one(client, text, tokens))

    start = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=run, args=(t,)) for t in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    else:
        for text in prompts:
            run(text)
        wall = sum(r["total"] for r in results)
    ttfts = sorted(r["ttft"] * 1000 for r in results)
    return {
        "tok_s": sum(r["tokens"] for r in results) / wall,
        "per_request": statistics.median((r["tokens"] - 1) / r["decode_s"] for r in results),
        "ttft_p50": statistics.median(ttfts),
        "ttft_p99": ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))],
    }


def greedy_32(model: Any, tokenizer: Any) -> dict[str, list[int]]:
    """The first 32 greedy tokens for every quality prompt."""
    out = {}
    with torch.inference_mode():
        for text in QUALITY_PROMPTS:
            ids = chat_ids(tokenizer, text)
            made = model.generate(ids, max_new_tokens=32, do_sample=False)
            out[text] = made[0, ids.shape[1] :].tolist()
    return out


def precisions(tokens: int) -> tuple[list[tuple[str, float, int]], dict[str, list[int]], Any]:
    """(precision, single-stream tok/s, prompts whose first 32 greedy tokens equal float32's)
    for every LOCAL_DTYPE on the CPU, plus float32's tokens and tokenizer for llama.cpp."""
    rows, reference, tokenizer = [], {}, None
    for precision in ("float32", "bfloat16", "int8", "int4"):
        m = load("smollm2-135m", default_model_ref(), "cpu", precision, CACHE)
        speed = bare(m.model, m.tokenizer, PROMPTS[:4], tokens)["tok_s"]
        got = greedy_32(m.model, m.tokenizer)
        reference, tokenizer = reference or got, tokenizer or m.tokenizer
        rows.append((precision, speed, sum(got[t] == reference[t] for t in QUALITY_PROMPTS)))
    return rows, reference, tokenizer


def llama_cpp(tokens: int, reference: dict[str, list[int]], tokenizer: Any) -> tuple | None:
    """llama.cpp on the same GGUF: single-stream tok/s, and its greedy agreement with ours."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=default_model_ref(), n_threads=os.cpu_count(), verbose=False)
    produced, busy = 0, 0.0
    for text in PROMPTS[:4]:
        start = time.perf_counter()
        out = llm.create_chat_completion(
            [{"role": "user", "content": text}], max_tokens=tokens, temperature=0
        )
        busy += time.perf_counter() - start
        produced += out["usage"]["completion_tokens"]
    same = 0
    for text in QUALITY_PROMPTS:
        ids = chat_ids(tokenizer, text)[0].tolist()
        got: list[int] = []
        for token in llm.generate(ids, top_k=1, temp=0, reset=True):
            got.append(int(token))
            if len(got) == len(reference[text]) or token == llm.token_eos():
                break
        same += got == reference[text]
    return produced / busy, same


def worker_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_over(pid: int, client: OpenAI, n: int) -> list[tuple[int, float]]:
    """Worker RSS after every fifth of `n` short sequential requests."""
    marks = [(0, worker_rss_mb(pid))]
    for i in range(1, n + 1):
        stream_one(client, PROMPTS[i % len(PROMPTS)], 8)
        if i % max(1, n // 5) == 0:
            marks.append((i, worker_rss_mb(pid)))
    return marks


def rounds(fp32: Any, client: OpenAI, prompts: list[str], tokens: int, n: int) -> dict:
    """Baseline, one request through the stack, all concurrently: `n` rounds, interleaved,
    so that each ratio compares figures taken minutes apart, not a quarter-hour."""
    runs: dict[str, list[float]] = {}
    for _ in range(n):
        base = bare(fp32.model, fp32.tokenizer, prompts, tokens)
        one = through_stack(client, prompts, tokens, concurrent=False)
        many = through_stack(client, prompts, tokens, concurrent=True)
        measured = {
            "base": base["tok_s"], "prefill": base["prefill_ms"],
            "one": one["tok_s"], "one_ratio": one["tok_s"] / base["tok_s"],
            "one_ttft50": one["ttft_p50"], "one_ttft99": one["ttft_p99"],
            "many": many["tok_s"], "many_ratio": many["tok_s"] / base["tok_s"],
            "many_ttft50": many["ttft_p50"], "many_ttft99": many["ttft_p99"],
            "per_request": many["per_request"],
        }  # fmt: skip
        for key, value in measured.items():
            runs.setdefault(key, []).append(value)
    return {k: statistics.median(v) for k, v in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rss-requests", type=int, default=500)
    parser.add_argument("--skip-precisions", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()
    prompts = (PROMPTS * (args.concurrency // len(PROMPTS) + 1))[: args.concurrency]
    conc = str(args.concurrency)

    fp32 = load("smollm2-135m", default_model_ref(), "cpu", "float32", CACHE)
    with Stack(LOCAL_DTYPE="float32") as stack:
        pid = stack.worker("local-mps", "-c", conc)
        client = OpenAI(base_url=stack.api() + "/v1", api_key="none", max_retries=0)
        stack.flower()  # beside the stack, idle, as `make run` starts it
        stream_one(client, "Hi", 4)
        r = rounds(fp32, client, prompts, args.tokens, args.rounds)
        rss = [] if args.skip_rss else rss_over(pid, client, args.rss_requests)
        stack.stop(pid)
        stack.worker("local-mps", "-c", conc, env={"LOCAL_DTYPE": "int4"})
        int4_one = through_stack(client, prompts, args.tokens, concurrent=False)
        int4_many = through_stack(client, prompts, args.tokens, concurrent=True)

    base = r["base"]
    print(f"\nSmolLM2-135M, {os.cpu_count()} CPU threads, {args.tokens} new tokens, "
          f"medians of {args.rounds} interleaved rounds")  # fmt: skip
    print(f"\n{'':46}{'tok/s':>8}{'vs base':>9}{'TTFT p50':>10}{'p99':>8}")
    print(f"{'fp32 model.generate, one at a time (baseline)':46}{base:8.1f}{1:9.2f}"
          f"{r['prefill']:10.0f}{'':>8}   (prefill ms)")  # fmt: skip

    def row(label: str, m: dict) -> tuple:
        return label, m["tok_s"], m["tok_s"] / base, m["ttft_p50"], m["ttft_p99"]

    fp32_one = {"tok_s": r["one"], "ttft_p50": r["one_ttft50"], "ttft_p99": r["one_ttft99"]}
    fp32_many = {"tok_s": r["many"], "ttft_p50": r["many_ttft50"], "ttft_p99": r["many_ttft99"]}
    rows = (
        row("fp32 stack, 1 request at a time", fp32_one),
        row(f"fp32 stack, {conc} concurrent (aggregate)", fp32_many),
        row("int4 stack, 1 request at a time", int4_one),
        row(f"int4 stack, {conc} concurrent (aggregate)", int4_many),
    )
    for label, tok_s, ratio, p50, p99 in rows:
        print(f"{label:46}{tok_s:8.1f}{ratio:9.2f}{p50:10.0f}{p99:8.0f}")
    print(f"{'  fp32, per request while ' + conc + ' run':46}{r['per_request']:8.1f}")
    print(f"\nTTFT at 1 request minus bare prefill: {r['one_ttft50'] - r['prefill']:+.0f} ms (p50)")

    if not args.skip_precisions:
        rows_p, reference, tokenizer = precisions(args.tokens)
        cpp = llama_cpp(args.tokens, reference, tokenizer)
        n = len(QUALITY_PROMPTS)
        print(
            f"\n{'LOCAL_DTYPE':12}{'tok/s':>8}{'vs llama.cpp':>14}  first 32 greedy tokens = fp32"
        )
        for precision, speed, same in rows_p:
            versus = f"{speed / cpp[0]:14.0%}" if cpp else f"{'-':>14}"
            print(f"{precision:12}{speed:8.1f}{versus}  {same}/{n}")
        if cpp:
            print(f"{'llama.cpp':12}{cpp[0]:8.1f}{1:14.0%}  {cpp[1]}/{n}")
        else:
            print("llama.cpp   (llama_cpp not installed: column skipped)")
    if rss:
        start_mb, end_mb = rss[0][1], rss[-1][1]
        trail = "  ".join(f"{n}:{mb:.0f}" for n, mb in rss)
        print(f"\nfp32 worker RSS MB after N requests: {trail}  ({(end_mb / start_mb - 1):+.1%})")


if __name__ == "__main__":
    main()
