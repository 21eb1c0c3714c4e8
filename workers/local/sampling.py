"""Per-request sampling with OpenAI's knobs: penalties, temperature (0 = greedy), top_p and
a seed. Runs on the CPU on one row of logits, so it is the same on every device."""

from __future__ import annotations

import torch

from workers.protocol import Sampling

NUCLEUS_K = 256


class Sampler:
    """OpenAI sampling on the last logits: penalties, temperature (0 = greedy), top_p, seed."""

    def __init__(self, params: Sampling, vocab: int, temperature: float, top_p: float) -> None:
        self.temperature = temperature if params.temperature is None else params.temperature
        self.top_p = top_p if params.top_p is None else params.top_p
        self.presence = params.presence_penalty or 0.0
        self.frequency = params.frequency_penalty or 0.0
        self.counts = torch.zeros(vocab) if (self.presence or self.frequency) else None
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
        if self.temperature == 0:
            token = int(torch.argmax(logits))
        else:
            token = self._sample(logits / self.temperature)
        if self.counts is not None and token < self.counts.shape[0]:
            self.counts[token] += 1
        return token

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
