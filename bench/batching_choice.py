"""Why the local worker batches with its own engine: on this machine, the same 8 requests x
128 greedy tokens through (a) model.generate one at a time, (b) one padded model.generate
batch, (c) transformers' ContinuousBatchingManager, (d) our BatchEngine — in one run.

    .venv/bin/python bench/batching_choice.py [--requests 8] [--tokens 128] [--rounds 2]

Contenders run in rotation, `--rounds` times, each on a fresh thread; medians are printed
(this machine's speed drifts by a third within minutes).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

import torch
from transformers import GenerationConfig

from workers.local.backend import LocalModel, off_main_thread
from workers.local.loading import default_model_ref, load
from workers.protocol import Sampling

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


def timed(fn) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """Run `fn` on a fresh thread, as every contender does: a main thread that has computed
    keeps an OpenMP team that slows torch on other threads (workers/local/backend.py)."""
    start = time.perf_counter()
    produced = off_main_thread(fn)
    return produced, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    n, prompts = args.tokens, (PROMPTS * 4)[: args.requests]
    cache = Path("~/.cache/inference-router/models").expanduser()
    loaded = off_main_thread(
        lambda: load("smollm2-135m", default_model_ref(), "cpu", "float32", cache)
    )
    model, tok = loaded.model, loaded.tokenizer
    ids = [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                return_dict=False)
        for p in prompts
    ]  # fmt: skip
    fixed = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False}

    def one_at_a_time() -> int:
        with torch.inference_mode():
            for x in ids:
                model.generate(torch.tensor([x]), **fixed)
        return n * len(ids)

    def padded() -> int:
        tok.padding_side = "left"
        batch = tok.pad({"input_ids": ids}, return_tensors="pt")
        with torch.inference_mode():
            model.generate(**batch, **fixed)
        return n * len(ids)

    def cbm() -> int:
        # its own copy of the model: the manager switches the attention implementation
        own = load("smollm2-135m", default_model_ref(), "cpu", "float32", cache).model
        config = GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=-1)
        manager = own.init_continuous_batching(generation_config=config)
        manager.start()
        rids = [manager.add_request(x, max_new_tokens=n, streaming=True) for x in ids]
        counts: list[int] = []

        def drain(rid: str) -> None:
            for out in manager.request_id_iter(rid):
                last = len(out.generated_tokens)
            counts.append(last)

        threads = [threading.Thread(target=drain, args=(r,)) for r in rids]
        [t.start() for t in threads]
        [t.join() for t in threads]
        manager.stop(block=True)
        return sum(counts)

    engine = LocalModel(loaded, capacity=len(ids))
    engine.engine.eos_ids = set()  # every request runs its full budget, like min_new_tokens

    def ours() -> int:
        made: list[int] = []
        reqs = [engine.request(x, n, Sampling(temperature=0)) for x in ids]
        threads = [threading.Thread(target=lambda r=r: made.append(len(list(r)))) for r in reqs]
        [t.start() for t in threads]
        [t.join() for t in threads]
        return sum(made)

    contenders = {
        "model.generate, one at a time": one_at_a_time,
        "model.generate, one padded batch": padded,
        "ContinuousBatchingManager": cbm,
        "BatchEngine (ours)": ours,
    }
    speeds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            produced, seconds = timed(fn)
            speeds[name].append(produced / seconds)
    base = statistics.median(speeds["model.generate, one at a time"])
    print(f"\n{len(ids)} requests x {n} greedy tokens, float32, CPU, medians of {args.rounds}\n")
    print(f"{'':40}{'tok/s':>8}{'x base':>8}")
    for name, values in speeds.items():
        speed = statistics.median(values)
        print(f"{name:40}{speed:8.1f}{speed / base:8.2f}")


if __name__ == "__main__":
    main()
