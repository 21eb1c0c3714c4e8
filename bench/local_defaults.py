"""The README's first example at the local worker's default sampling: how often does the
answer name Paris, and how often does it run to max_tokens, for each candidate default?

    .venv/bin/python bench/local_defaults.py [--runs 100] [--configs old,chosen,...]
        [--concurrency 16] [--max-tokens 512] [--unseeded] [--show]
    .venv/bin/python bench/local_defaults.py --stack [--runs 100]

In-process (the default), every configuration drives the real model through
`LocalModel.stream` (the worker's own path: chat template, batch engine, sampler, decoder)
with `--concurrency` requests in one batch, one configuration after another in the same
run. `--stack` sends the same request through the whole stack instead (API, queue, a
Celery local worker, token stream) with the real `openai` SDK, one worker per
configuration started with that configuration's LOCAL_* settings; without `--configs` it
runs the worker's built-in defaults alone.

Each configuration is a set of LOCAL_* settings, so any row can be reproduced on a real
worker by exporting them. Run i gets seed i (`--unseeded`: fresh randomness). Prints per
configuration: answers naming Paris, answers that ran to max_tokens, those the loop guard
stopped, finish reasons, mean completion tokens, and the first non-Paris answer.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings
from workers.local.backend import LocalModel, off_main_thread
from workers.local.loading import Loaded, default_model_ref, load
from workers.local.sampling import Defaults
from workers.protocol import ChatJob, Chunk, Done, Sampling

QUESTION = "What is the capital of France?"
OLD = {"LOCAL_TEMPERATURE": "0.2", "LOCAL_TOP_P": "0.9"}
NO_GUARDS = {"LOCAL_REPETITION_PENALTY": "1", "LOCAL_LOOP_WINDOW": "0"}
#: candidate defaults: the LOCAL_* settings a worker would run with (unset: the code default)
CONFIGS: dict[str, dict[str, str]] = {
    "old": {**OLD, **NO_GUARDS},
    "old+penalty1.1": {**OLD, **NO_GUARDS, "LOCAL_REPETITION_PENALTY": "1.1"},
    "old+penalty1.2": {**OLD, **NO_GUARDS, "LOCAL_REPETITION_PENALTY": "1.2"},
    "old+guard64": {**OLD, **NO_GUARDS, "LOCAL_LOOP_WINDOW": "64"},
    "t0.1": {**NO_GUARDS, "LOCAL_TEMPERATURE": "0.1", "LOCAL_TOP_P": "0.9"},
    "t0.2+top_p0.5": {**NO_GUARDS, "LOCAL_TEMPERATURE": "0.2", "LOCAL_TOP_P": "0.5"},
    "greedy": {**NO_GUARDS, "LOCAL_TEMPERATURE": "0"},
    "greedy+penalty1.1": {**NO_GUARDS, "LOCAL_TEMPERATURE": "0", "LOCAL_REPETITION_PENALTY": "1.1"},
    "new": {},  # the worker's built-in defaults (workers/local/sampling.py)
}
#: other questions, each with the words a right answer contains (any of them)
FACTS = {
    "What is the capital of Germany?": ("berlin",),
    "What is the capital of Italy?": ("rome",),
    "What is the capital of Japan?": ("tokyo",),
    "What is the capital of Spain?": ("madrid",),
    "Who wrote Romeo and Juliet?": ("shakespeare",),
    "What is the largest ocean on Earth?": ("pacific",),
    "What colour is the sky on a clear day?": ("blue",),
    "How many legs does a spider have?": ("eight", "8"),
    "What gas do plants take in from the air?": ("carbon dioxide", "co2"),
    "What is the boiling point of water in Celsius?": ("100",),
}
#: open-ended prompts, where a small model's loops show
OPEN = [
    "Write a poem about the sea.",
    "Tell me a story about a dragon.",
    "Explain how rain forms.",
    "Describe your favourite food.",
]
CACHE = Path(Settings.load(os.environ).model_cache).expanduser()


@dataclass
class Answer:
    text: str
    finish: str
    tokens: int


Todo = list[tuple[str, int | None]]  # (question, seed) per request


def job(question: str, seed: int | None, max_tokens: int | None) -> ChatJob:
    """One user message, as the API hands it to a worker (plus a seed)."""
    return ChatJob(
        id="job_bench",
        model="smollm2-135m",
        backend="local",
        kind="local",
        upstream_model="smollm2-135m",
        messages=[{"role": "user", "content": question}],
        sampling=Sampling(seed=seed, max_tokens=max_tokens),
    )


def in_process(
    loaded: Loaded, env: dict[str, str], todo: Todo, args: argparse.Namespace
) -> list[Answer]:
    """Every request through LocalModel.stream, `args.concurrency` at a time."""
    model = LocalModel(loaded, args.concurrency, Defaults.from_settings(Settings.load(env)))

    def ask(question: str, seed: int | None) -> Answer:
        parts, done = [], None
        for item in model.stream(job(question, seed, args.max_tokens)):
            if isinstance(item, Chunk):
                parts.append(item.delta)
            elif isinstance(item, Done):
                done = item
        assert done is not None
        return Answer("".join(parts), done.finish_reason, done.usage.completion_tokens)

    try:
        return concurrently(ask, todo, args.concurrency)
    finally:
        model.engine.close()


def through_stack(env: dict[str, str], todo: Todo, args: argparse.Namespace) -> list[Answer]:
    """Every request with the `openai` SDK against a fresh stack whose local worker runs
    with `env`, `args.concurrency` at a time."""
    from openai import OpenAI
    from stack import Stack

    conc = str(args.concurrency)
    with Stack(ROUTER_TASK_EVENTS="0", LOCAL_DTYPE="float32") as stack:
        stack.worker("local-mps", "-c", conc, env={"LOCAL_MAX_BATCH": conc, **env})
        client = OpenAI(base_url=stack.api() + "/v1", api_key="none", max_retries=0, timeout=600)

        def ask(question: str, seed: int | None) -> Answer:
            extra = {} if seed is None else {"seed": seed}
            if args.max_tokens:
                extra["max_tokens"] = args.max_tokens
            c = client.chat.completions.create(
                model="smollm2-135m", messages=[{"role": "user", "content": question}], **extra
            )
            choice = c.choices[0]
            tokens = c.usage.completion_tokens if c.usage else 0
            return Answer(choice.message.content or "", choice.finish_reason, tokens)

        return concurrently(ask, todo, args.concurrency)


def requests(questions: list[str], runs: int, unseeded: bool) -> Todo:
    """Each question `runs` times; run i gets seed i."""
    return [(q, None if unseeded else i) for q in questions for i in range(runs)]


def concurrently(ask: Callable[[str, int | None], Answer], todo: Todo, n: int) -> list[Answer]:
    """`ask` for every request, `n` at a time; answers in the order of `todo`."""
    work: queue.SimpleQueue[tuple[int, tuple[str, int | None]]] = queue.SimpleQueue()
    for item in enumerate(todo):
        work.put(item)
    answers: dict[int, Answer] = {}

    def drain() -> None:
        while True:
            try:
                i, (question, seed) = work.get_nowait()
            except queue.Empty:
                return
            answers[i] = ask(question, seed)

    threads = [threading.Thread(target=drain) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [answers[i] for i in range(len(todo))]


def report(name: str, answers: list[Answer], budget: int, wall: float, show: bool) -> None:
    """One configuration's row for the README example."""
    paris = sum("paris" in a.text.lower() for a in answers)
    capped, guarded = _ends(answers, budget)
    finishes = ", ".join(f"{k} {v}" for k, v in sorted(Counter(a.finish for a in answers).items()))
    mean = statistics.mean(a.tokens for a in answers)
    n = len(answers)
    print(f"{name:20} {paris:4}/{n:<4} {capped:7} {guarded:8} {mean:9.1f} {wall:7.0f}  {finishes}")
    wrong = [a for a in answers if "paris" not in a.text.lower()]
    if wrong and not show:
        print(f"{'':20}   e.g. {wrong[0].text[:100]!r}")
    if show:
        for a in answers:
            print(f"{'':20}   {a.finish:6} {a.tokens:4} {a.text[:100]!r}")


def report_others(name: str, answers: list[Answer], runs: int, budget: int) -> None:
    """One configuration's row for the other questions and the open-ended prompts."""
    facts = answers[: len(FACTS) * runs]
    right = sum(
        any(word in a.text.lower() for word in FACTS[q])
        for q, a in zip([q for q in FACTS for _ in range(runs)], facts, strict=True)
    )
    capped_f, guarded_f = _ends(facts, budget)
    story = answers[len(facts) :]
    capped_o, guarded_o = _ends(story, budget)
    mean = statistics.mean(a.tokens for a in story)
    print(
        f"{name:20} {right:4}/{len(facts):<4} {capped_f:7} {guarded_f:8}"
        f"   {capped_o:4}/{len(story):<4} {guarded_o:8} {mean:9.1f}"
    )


def _ends(answers: list[Answer], budget: int) -> tuple[int, int]:
    """(ran to max_tokens, stopped early by the loop guard)."""
    capped = sum(a.finish == "length" and a.tokens >= budget for a in answers)
    return capped, sum(a.finish == "length" and a.tokens < budget for a in answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="requests per configuration")
    parser.add_argument("--configs", default="", help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=0, help="0: leave it to the worker")
    parser.add_argument("--stack", action="store_true", help="through the whole stack")
    parser.add_argument("--unseeded", action="store_true")
    parser.add_argument("--show", action="store_true", help="print every answer")
    parser.add_argument(
        "--others", type=int, default=0, metavar="RUNS",
        help="also ask 10 other questions and 4 open-ended prompts RUNS times each",
    )  # fmt: skip
    args = parser.parse_args()
    names = [c for c in args.configs.split(",") if c] or (["new"] if args.stack else [*CONFIGS])
    unknown = set(names) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configurations: {', '.join(sorted(unknown))}")
    budget = args.max_tokens or 512  # the worker's default max_tokens
    loaded = None if args.stack else off_main_thread(_load)

    def answers(env: dict[str, str], todo: Todo) -> list[Answer]:
        if loaded is None:
            return through_stack(env, todo, args)
        return in_process(loaded, env, todo, args)

    where = "through the stack (openai SDK)" if args.stack else "in-process (LocalModel.stream)"
    seeds = "unseeded" if args.unseeded else "run i has seed i"
    print(f"README example x {args.runs} per configuration, {where}, {args.concurrency} at a "
          f"time, max_tokens {budget}, {seeds}")  # fmt: skip
    print(f"\n{'configuration':20} {'Paris':>9} {'capped':>7} {'guarded':>8} {'mean tok':>9} "
          f"{'wall s':>7}  finish reasons")  # fmt: skip
    for name in names:
        start = time.perf_counter()
        got = answers(CONFIGS[name], requests([QUESTION], args.runs, args.unseeded))
        report(name, got, budget, time.perf_counter() - start, args.show)
    if args.others:
        print(f"\n{len(FACTS)} other questions and {len(OPEN)} open-ended prompts x {args.others}:")
        print(f"\n{'configuration':20} {'right':>9} {'capped':>7} {'guarded':>8}"
              f"   {'open: capped':>12} {'guarded':>8} {'mean tok':>9}")  # fmt: skip
        for name in names:
            todo = requests([*FACTS, *OPEN], args.others, args.unseeded)
            report_others(name, answers(CONFIGS[name], todo), args.others, budget)
    print("\n" + "\n".join(f"{name:20} {_settings(CONFIGS[name])}" for name in names))


def _load() -> Loaded:
    return load("smollm2-135m", default_model_ref(), "cpu", "float32", CACHE / "models")


def _settings(env: dict[str, str]) -> str:
    d = Defaults.from_settings(Settings.load(env))
    return (
        f"temperature {d.temperature}, top_p {d.top_p}, repetition penalty "
        f"{d.repetition_penalty} over {d.penalty_window}, loop guard {d.loop_window or 'off'}"
    )


if __name__ == "__main__":
    main()
