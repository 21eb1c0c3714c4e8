"""The local sampler on made-up logits (no model): the repetition penalty and loop guard of
the worker's defaults, and that a request choosing its own sampling gets exactly that."""

from __future__ import annotations

import pytest
import torch

from core.settings import Settings
from workers.local.sampling import Defaults, LoopGuard, Sampler, sets_own_sampling
from workers.protocol import Sampling

VOCAB = 10
#: defaults with a penalty and a guard strong enough to show in a few tokens
STRICT = Defaults(temperature=0, top_p=1.0, repetition_penalty=2.0, penalty_window=2, loop_window=8)


def logits(**values: float) -> torch.Tensor:
    """Logits of -1 everywhere except the given tokens (t3=2.0 -> token 3 at 2.0)."""
    out = torch.full((VOCAB,), -1.0)
    for name, value in values.items():
        out[int(name[1:])] = value
    return out


def test_the_penalty_divides_a_recent_positive_logit_and_multiplies_a_negative_one() -> None:
    sampler = STRICT.sampler(Sampling(), VOCAB)
    row = logits(t3=2.0, t4=1.5, t5=0.9)
    picks = [sampler.next(row) for _ in range(3)]
    # 3 first; then 3 is at 1.0 < 1.5, so 4; then 3 (1.0) beats 4 (0.75) and 5 (0.9)
    assert picks == [3, 4, 3]
    low = STRICT.sampler(Sampling(), VOCAB)
    assert [low.next(logits(t3=-0.5, t4=-0.8)) for _ in range(2)] == [3, 4]  # -1.0 < -0.8


def test_the_penalty_covers_only_the_last_window_tokens() -> None:
    sampler = STRICT.sampler(Sampling(), VOCAB)
    sampler.next(logits(t3=2.0))
    sampler.next(logits(t4=2.0))
    sampler.next(logits(t5=2.0))  # the window (2) now holds 4 and 5, no longer 3
    assert sampler.next(logits(t3=1.2, t4=2.0, t5=2.0)) == 3  # 1.2 against 1.0 and 1.0


@pytest.mark.parametrize(
    "own",
    [
        {"temperature": 0},
        {"temperature": 0.7},
        {"top_p": 0.95},
        {"presence_penalty": 0.0},
        {"frequency_penalty": 0.0},
    ],
)
def test_a_request_with_its_own_sampling_gets_no_hidden_penalty_or_guard(own: dict) -> None:
    params = Sampling(seed=3, **own)
    assert sets_own_sampling(params)
    sampler = STRICT.sampler(params, VOCAB)
    plain = Sampler(params, VOCAB, 1.0, 1.0)  # OpenAI's defaults, no penalty, no guard
    row = logits(t3=2.0, t4=1.5)
    picks = [sampler.next(row) for _ in range(40)]
    assert picks == [plain.next(row) for _ in range(40)]
    assert not sampler.looping


def test_fields_left_out_of_an_explicit_request_take_openais_defaults() -> None:
    only_temperature = STRICT.sampler(Sampling(temperature=0.7), VOCAB)
    assert (only_temperature.temperature, only_temperature.top_p) == (0.7, 1.0)
    only_top_p = STRICT.sampler(Sampling(top_p=0.3), VOCAB)
    assert (only_top_p.temperature, only_top_p.top_p) == (1.0, 0.3)
    for sampler in (only_temperature, only_top_p):
        assert sampler.repetition == 1.0 and sampler.guard is None
    left_to_us = STRICT.sampler(Sampling(seed=4), VOCAB)
    assert (left_to_us.temperature, left_to_us.top_p, left_to_us.repetition) == (0, 1.0, 2.0)
    assert left_to_us.guard is not None


def test_temperature_zero_is_exactly_argmax_whatever_the_defaults() -> None:
    sampler = STRICT.sampler(Sampling(temperature=0), VOCAB)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        row = torch.randn(VOCAB, generator=generator)
        assert sampler.next(row) == int(torch.argmax(row))
    same = STRICT.sampler(Sampling(temperature=0), VOCAB)
    assert [same.next(logits(t7=1.0)) for _ in range(30)] == [7] * 30 and not same.looping


def test_seed_stop_and_max_tokens_leave_the_defaults_in_force() -> None:
    params = Sampling(seed=1, max_tokens=5, stop=("x",))
    assert not sets_own_sampling(params)
    sampler = STRICT.sampler(params, VOCAB)
    assert [sampler.next(logits(t3=2.0, t4=1.5)) for _ in range(2)] == [3, 4]  # penalized


def test_seeded_default_sampling_repeats_with_the_penalty_on() -> None:
    defaults = Defaults(temperature=1.0, top_p=0.9, repetition_penalty=1.3, penalty_window=4)
    generator = torch.Generator().manual_seed(1)
    rows = [torch.randn(VOCAB, generator=generator) for _ in range(60)]

    def draw(seed: int) -> list[int]:
        sampler = defaults.sampler(Sampling(seed=seed), VOCAB)
        return [sampler.next(row) for row in rows]

    assert draw(11) == draw(11)
    assert draw(11) != draw(12)


def test_loop_guard_fires_once_the_window_is_one_repeated_block() -> None:
    guard = LoopGuard(12)
    fired = [guard.push(t) for t in [9, 8, *([1, 2, 3] * 6)]]
    # the loop starts at the third token; it fills the 12-token window at the 14th
    assert fired.index(True) == 13


def test_loop_guard_ignores_text_that_does_not_repeat() -> None:
    guard = LoopGuard(12)
    assert not any(guard.push(t) for t in range(100))
    longer = LoopGuard(12)  # a block longer than a quarter of the window is not a loop yet
    assert not any(longer.push(t) for t in [1, 2, 3, 4, 5] * 4)
    single = LoopGuard(12)
    assert [single.push(7) for _ in range(12)][-2:] == [False, True]


def test_the_sampler_raises_its_loop_flag_under_the_defaults() -> None:
    sampler = Defaults(temperature=0, top_p=1.0, loop_window=8).sampler(Sampling(), VOCAB)
    flags = []
    for _ in range(8):
        sampler.next(logits(t7=1.0))
        flags.append(sampler.looping)
    assert flags == [False] * 7 + [True]


def test_defaults_come_from_the_environment() -> None:
    env = {
        "LOCAL_TEMPERATURE": "0.5",
        "LOCAL_TOP_P": "0.8",
        "LOCAL_REPETITION_PENALTY": "1.3",
        "LOCAL_PENALTY_WINDOW": "32",
        "LOCAL_LOOP_WINDOW": "0",
    }
    assert Defaults.from_settings(Settings.load(env)) == Defaults(0.5, 0.8, 1.3, 32, 0)
    assert Defaults.from_settings(Settings()) == Defaults()
    assert Defaults() == Defaults(0.2, 0.5, 1.1, 64, 64)  # bench/local_defaults.py "new"


# -- rows that cannot be sampled ----------------------------------------------------------


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_a_temperature_that_overflows_the_logits_falls_back_to_argmax(top_p: float) -> None:
    """1e-300 turns every logit into +-inf (NaN after softmax): argmax, not an exception."""
    sampler = Sampler(Sampling(temperature=1e-300, top_p=top_p, seed=1), VOCAB, 1.0, 1.0)
    assert [sampler.next(logits(t3=2.0, t4=1.5)) for _ in range(5)] == [3] * 5


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (logits(t2=float("nan"), t5=3.0), 5),  # NaN never wins
        (logits(t6=float("inf"), t5=3.0), 6),  # +inf does
        (torch.full((VOCAB,), float("nan")), 0),  # nothing to choose: still a token
    ],
)
@pytest.mark.parametrize("temperature", [0, 0.7])
def test_non_finite_logits_give_the_argmax_of_the_rest(
    row: torch.Tensor, expected: int, temperature: float
) -> None:
    sampler = Sampler(Sampling(temperature=temperature, seed=1), VOCAB, 1.0, 1.0)
    assert sampler.next(row) == expected


def test_masked_out_tokens_leave_the_others_sampled() -> None:
    """-inf for a token is a mask, not a fault: the rest is still sampled, never the masked."""
    row = torch.zeros(VOCAB)
    row[:5] = float("-inf")
    sampler = Sampler(Sampling(temperature=1.0, seed=2), VOCAB, 1.0, 1.0)
    picks = {sampler.next(row) for _ in range(200)}
    assert picks == set(range(5, VOCAB))
