"""Per-request sampling with OpenAI's knobs: penalties, temperature (0 = greedy), top_p and
a seed. Runs on the CPU on one row of logits, so it is the same on every device.

A request that sets none of temperature, top_p, presence_penalty or frequency_penalty gets
the worker's defaults (`Defaults`, from the LOCAL_* settings), a repetition penalty and loop
guard included. A request that sets any of them gets exactly what it asked for, with
OpenAI's defaults (temperature 1, top_p 1, no penalty, no guard) for what it left out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from core.settings import DEFAULTS, Settings
from workers.protocol import Sampling

NUCLEUS_K = 256
OPENAI_TEMPERATURE = 1.0  # what OpenAI uses for a temperature or top_p left out
OPENAI_TOP_P = 1.0


@dataclass(frozen=True)
class Defaults:
    """What a request that leaves sampling to the worker gets.

    Measured on the README's example with bench/local_defaults.py (docs/mac-worker.md):
    SmolLM2-135M's first token there is "The" (-> "Paris") or "L" (-> "L'Étoile, la
    Marseillaise, la femme, la femme, ...") at nearly even odds, so with SmolLM2's
    recommended temperature 0.2 and top_p 0.9 it named Paris in 63 runs of 100 and 35 ran
    to max_tokens. Temperature 0.2 stays (OpenAI's 1 makes a 135M model ramble); top_p 0.5
    samples only where no token holds half the sharpened mass; the repetition penalty breaks
    loops; the loop guard ends any that still form.
    """

    temperature: float = DEFAULTS.local_temperature  # LOCAL_TEMPERATURE
    top_p: float = DEFAULTS.local_top_p  # LOCAL_TOP_P
    repetition_penalty: float = DEFAULTS.local_repetition_penalty  # 1 = none
    penalty_window: int = DEFAULTS.local_penalty_window  # how many last generated tokens
    loop_window: int = DEFAULTS.local_loop_window  # 0 = no loop guard

    @classmethod
    def from_settings(cls, settings: Settings) -> Defaults:
        """The worker's LOCAL_TEMPERATURE, _TOP_P, _REPETITION_PENALTY, _PENALTY_WINDOW and
        _LOOP_WINDOW (core.settings)."""
        return cls(
            temperature=settings.local_temperature,
            top_p=settings.local_top_p,
            repetition_penalty=settings.local_repetition_penalty,
            penalty_window=settings.local_penalty_window,
            loop_window=settings.local_loop_window,
        )

    def sampler(self, params: Sampling, vocab: int) -> Sampler:
        """The sampler for one request with these defaults."""
        return Sampler(
            params,
            vocab,
            self.temperature,
            self.top_p,
            self.repetition_penalty,
            self.penalty_window,
            self.loop_window,
        )


def sets_own_sampling(params: Sampling) -> bool:
    """True when the request chose any part of its token distribution itself (a seed, stop
    strings or max_tokens do not count: they leave the distribution to the worker)."""
    chosen = (params.temperature, params.top_p, params.presence_penalty, params.frequency_penalty)
    return any(value is not None for value in chosen)


class LoopGuard:
    """Notices a degenerate loop: the last `window` tokens are one block of at most a
    quarter of that length, repeated ("la femme, la femme, la femme, ...").

    Keeps, for every period p, how many of the latest tokens equal the token p before
    them, so each new token costs one comparison per period.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.recent: deque[int] = deque(maxlen=window)
        self.runs = [0] * (window // 4 + 1)  # runs[p] for p in 1..window // 4

    def push(self, token: int) -> bool:
        """Add a generated token; True once the tail is a loop."""
        self.recent.append(token)
        n = len(self.recent)
        looping = False
        for p in range(1, min(len(self.runs), n)):
            self.runs[p] = self.runs[p] + 1 if token == self.recent[n - 1 - p] else 0
            looping = looping or self.runs[p] + p >= self.window
        return looping


class Sampler:
    """OpenAI sampling on the last logits: penalties, temperature (0 = greedy), top_p, seed.

    `temperature`, `top_p`, `repetition_penalty` (over the last `penalty_window` generated
    tokens) and the loop guard (`loop_window` > 0) are the worker's defaults: they apply to
    a request that sets none of its own sampling (`sets_own_sampling`). A request that does
    gets OpenAI's defaults for the fields it left out, and neither penalty nor guard.
    """

    def __init__(
        self,
        params: Sampling,
        vocab: int,
        temperature: float,
        top_p: float,
        repetition_penalty: float = 1.0,
        penalty_window: int = 64,
        loop_window: int = 0,
    ) -> None:
        if sets_own_sampling(params):
            temperature, top_p = OPENAI_TEMPERATURE, OPENAI_TOP_P
            repetition_penalty, loop_window = 1.0, 0
        self.temperature = temperature if params.temperature is None else params.temperature
        self.top_p = top_p if params.top_p is None else params.top_p
        self.presence = params.presence_penalty or 0.0
        self.frequency = params.frequency_penalty or 0.0
        self.counts = torch.zeros(vocab) if (self.presence or self.frequency) else None
        self.repetition = repetition_penalty
        self.recent: deque[int] = deque(maxlen=max(1, penalty_window))
        self.guard = LoopGuard(loop_window) if loop_window > 0 else None
        self.looping = False  # set once the loop guard sees a loop: the request should end
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()

    def next(self, logits: torch.Tensor) -> int:
        logits = logits.float().cpu()
        if self.counts is not None:
            n = self.counts[: logits.shape[0]]
            logits = logits - n * self.frequency - (n > 0).float() * self.presence
        if self.repetition != 1.0 and self.recent:
            logits = self._penalize(logits)
        token = self._pick(logits)
        if self.counts is not None and token < self.counts.shape[0]:
            self.counts[token] += 1
        if self.repetition != 1.0:
            self.recent.append(token)
        if self.guard is not None:
            self.looping = self.guard.push(token)
        return token

    def _penalize(self, logits: torch.Tensor) -> torch.Tensor:
        """The CTRL repetition penalty (transformers' and llama.cpp's): a recent token's
        logit is divided by the penalty when positive and multiplied by it when negative."""
        ids = torch.tensor(sorted(set(self.recent)), dtype=torch.long)
        ids = ids[ids < logits.shape[0]]
        seen = logits[ids]
        logits = logits.clone()
        logits[ids] = torch.where(seen > 0, seen / self.repetition, seen * self.repetition)
        return logits

    def _pick(self, logits: torch.Tensor) -> int:
        """Sample at the temperature, or take the argmax: for temperature 0, and whenever the
        scaled row has no finite maximum (a NaN or +inf from the model, or a division that
        overflowed), where softmax would give NaN and torch.multinomial would raise."""
        if self.temperature > 0:
            scaled = logits / self.temperature
            if bool(torch.isfinite(scaled.max())):
                return self._sample(scaled)
        return int(torch.argmax(torch.nan_to_num(logits, nan=-torch.inf)))

    def _sample(self, logits: torch.Tensor) -> int:
        probs = torch.softmax(logits, dim=-1)
        if self.top_p >= 1.0:
            return int(torch.multinomial(probs, 1, generator=self.generator))
        mass, tokens = self._nucleus(probs)
        return int(tokens[torch.multinomial(mass, 1, generator=self.generator)])

    def _nucleus(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The most likely tokens whose mass first reaches top_p, most likely first.

        Looks at the top NUCLEUS_K first (nearly always enough) instead of sorting the whole
        vocabulary, which would cost a millisecond per token per request on a CPU.
        """
        top, order = torch.topk(probs, min(NUCLEUS_K, probs.numel()))
        if top.numel() < probs.numel() and float(top.sum()) < self.top_p:
            top, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(top, dim=-1) - top < self.top_p
        keep[0] = True
        return top[keep], order[keep]
