"""The batch engine on the real model: batched output equals solo output, cancelled rows
free their slot, and a broken request (its prefill, its sampling) fails alone."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from workers.local import LocalBackend, LocalModel
from workers.local.engine import Finish, Request
from workers.local.sampling import Sampler
from workers.protocol import Sampling

PROMPTS = [
    "What is the capital of France?",
    "Write a poem about the sea.",
    "Explain gravity to a child.",
    "List three fruits.",
    "Who wrote Hamlet?",
    "Describe a cat.",
]


@pytest.fixture(scope="module")
def model() -> LocalModel:
    return LocalBackend.from_env(os.environ).models["smollm2-135m"]


def ids(model: LocalModel, text: str) -> list[int]:
    return model.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=False
    )


def generate(model: LocalModel, text: str, sampling: Sampling, budget: int = 24) -> list[int]:
    return list(model.request(ids(model, text), budget, sampling))


def together(model: LocalModel, sampling: Sampling, stagger: float = 0.0) -> dict[str, list[int]]:
    """Every prompt at once (optionally joining a running batch one after another)."""
    out: dict[str, list[int]] = {}

    def one(text: str) -> None:
        out[text] = generate(model, text, sampling)

    threads = [threading.Thread(target=one, args=(t,)) for t in PROMPTS]
    for t in threads:
        t.start()
        time.sleep(stagger)
    for t in threads:
        t.join()
    return out


def test_batched_greedy_output_equals_solo(model: LocalModel) -> None:
    greedy = Sampling(temperature=0)
    solo = {t: generate(model, t, greedy) for t in PROMPTS}
    assert together(model, greedy) == solo
    assert together(model, greedy, stagger=0.1) == solo  # rows joining mid-batch


def test_seeded_sampling_repeats_and_batched_sampling_stays_close(model: LocalModel) -> None:
    seeded = Sampling(temperature=0.9, seed=42)
    solo = {t: generate(model, t, seeded) for t in PROMPTS}
    assert {t: generate(model, t, seeded) for t in PROMPTS} == solo
    # In a batch the matmuls take other shapes, so logits differ in their last bits and a
    # sampled draw can, rarely, land on the neighbouring token; most rows are unchanged.
    batched = together(model, seeded)
    assert sum(batched[t] == solo[t] for t in PROMPTS) >= len(PROMPTS) - 2


def test_a_cancelled_request_frees_its_slot(model: LocalModel) -> None:
    narrow = LocalModel(model.loaded, capacity=1)
    greedy = Sampling(temperature=0)
    prompt = ids(model, "Write a very long story about dragons.")
    long_one = narrow.request(prompt, 400, greedy)
    waiting = narrow.request(ids(model, "What is 2+2?"), 8, greedy)
    first = [next(iter(long_one)) for _ in range(3)]
    assert len(first) == 3
    assert waiting.tokens.empty()  # the only slot is taken
    narrow.engine.cancel(long_one)
    started = time.monotonic()
    answer = list(waiting)
    assert answer and time.monotonic() - started < 10
    rest = list(long_one)
    assert long_one.finish == Finish("cancelled")
    assert len(first) + len(rest) < 50  # stopped within a step, far from its 400 tokens
    narrow.engine.close()


def test_a_request_that_breaks_prefill_fails_alone(model: LocalModel) -> None:
    greedy = Sampling(temperature=0)
    healthy = model.request(ids(model, "Write a poem about the sea."), 40, greedy)
    next(iter(healthy))
    broken = Request([1, 10**7, 2], 4, Sampler(greedy, model.vocab, 0.2, 0.9))
    model.engine.submit(broken)
    with pytest.raises((IndexError, RuntimeError)):  # an out-of-vocabulary token id
        list(broken)
    assert list(healthy)  # the running row carried on to its end
    assert healthy.finish in (Finish("length"), Finish("stop"))


class BreaksAfter(Sampler):
    """A sampler that raises on its `n`-th token, as a row with a sampling bug would."""

    def __init__(self, n: int, vocab: int) -> None:
        super().__init__(Sampling(temperature=0), vocab, 0.0, 1.0)
        self.left = n

    def next(self, logits: torch.Tensor) -> int:
        self.left -= 1
        if self.left == 0:
            raise RuntimeError("this row cannot be sampled")
        return super().next(logits)


def beside_a_greedy_row(model: LocalModel, other: Request) -> list[int]:
    """Submit `other` while a greedy row is running; the greedy row's whole output."""
    healthy = model.request(ids(model, "Write a poem about the sea."), 24, Sampling(temperature=0))
    tokens = [next(iter(healthy))]
    model.engine.submit(other)
    tokens += list(healthy)
    assert healthy.finish in (Finish("length"), Finish("stop"))
    return tokens


@pytest.mark.parametrize("n", [1, 3])  # its first token (at prefill) or a later one
def test_a_row_whose_sampler_raises_fails_alone(model: LocalModel, n: int) -> None:
    solo = generate(model, "Write a poem about the sea.", Sampling(temperature=0))
    broken = Request(ids(model, "Who wrote Hamlet?"), 24, BreaksAfter(n, model.vocab))
    assert beside_a_greedy_row(model, broken) == solo
    with pytest.raises(RuntimeError, match="cannot be sampled"):
        list(broken)
    assert broken.finish is not None and broken.finish.reason == "error"


def test_a_temperature_too_small_to_divide_by_answers_greedily_beside_a_greedy_row(
    model: LocalModel,
) -> None:
    """temperature=1e-300 overflowed the logits, and torch.multinomial raised for the batch."""
    solo = generate(model, "Write a poem about the sea.", Sampling(temperature=0))
    prompt = ids(model, "Who wrote Hamlet?")
    tiny = Request(prompt, 24, Sampler(Sampling(temperature=1e-300), model.vocab, 0.2, 0.9))
    assert beside_a_greedy_row(model, tiny) == solo
    assert list(tiny) == list(model.request(prompt, 24, Sampling(temperature=0)))
