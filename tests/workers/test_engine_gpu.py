"""The batch engine on an accelerator (CUDA or Apple MPS), with a tiny random-weight Llama
built from a config: batched greedy output equals solo output there too. Skipped on
machines without one."""

from __future__ import annotations

import threading

import pytest
import torch

from workers.local.engine import BatchEngine, Request
from workers.local.sampling import Sampler
from workers.protocol import Sampling

if torch.cuda.is_available():
    DEVICE = "cuda"
elif torch.backends.mps.is_available():
    DEVICE = "mps"
else:
    DEVICE = ""

pytestmark = pytest.mark.skipif(not DEVICE, reason="no CUDA or MPS device on this machine")


@pytest.fixture(scope="module")
def batch_engine() -> BatchEngine:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 all the way: no near-tie flips
    model = LlamaForCausalLM(config).to(DEVICE, torch.float32).eval()
    return BatchEngine(model, eos_ids=set(), device=DEVICE, capacity=8)


def run(batch_engine: BatchEngine, prompt: list[int]) -> list[int]:
    sampler = Sampler(Sampling(temperature=0), 512, 0.2, 0.9)
    return list(batch_engine.submit(Request(prompt, 32, sampler)))


def test_batched_equals_solo_on_the_accelerator(batch_engine: BatchEngine) -> None:
    prompts = [[1, *range(10 + i, 20 + 3 * i)] for i in range(6)]
    solo = [run(batch_engine, p) for p in prompts]
    batched: dict[int, list[int]] = {}
    threads = [
        threading.Thread(target=lambda i=i: batched.__setitem__(i, run(batch_engine, prompts[i])))
        for i in range(len(prompts))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [batched[i] for i in range(len(prompts))] == solo
    assert all(len(s) == 32 for s in solo)
