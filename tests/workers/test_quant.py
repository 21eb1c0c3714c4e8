"""Weight-only int8/int4 layers against float32, and the quantized model end to end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from core.settings import Settings
from workers.local.backend import LocalModel
from workers.local.loading import default_model_ref, load
from workers.local.quant import GROUP, Int4Linear, Int8Linear
from workers.protocol import Sampling


def test_int8_linear_is_close_to_float32() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 128)
    x = torch.randn(3, 5, 256)
    got, want = Int8Linear(linear)(x), linear(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_int4_is_exact_for_weights_on_a_q4_1_grid() -> None:
    torch.manual_seed(0)
    low = torch.randn(64, 256 // GROUP, 1)
    step = torch.rand(64, 256 // GROUP, 1) * 0.1 + 0.01
    q = torch.randint(0, 16, (64, 256 // GROUP, GROUP)).float()
    q[..., 0], q[..., 1] = 0, 15  # every block spans its full range, as Q4_1 blocks do
    linear = nn.Linear(256, 64, bias=False)
    linear.weight.data = (low + q * step).reshape(64, 256)
    x = torch.randn(4, 256)
    # the same 4-bit values, with the block's scale and zero point as the kernel keeps
    # them (bf16): a wrong scale, zero point or packing would be far outside 1%
    scale = step.bfloat16().float()
    zero = (low + 8 * step).bfloat16().float()
    weight = ((q - 8) * scale + zero).reshape(64, 256)
    reference = x.bfloat16().float() @ weight.T
    got = Int4Linear(linear)(x)
    assert (got - reference).abs().max() <= 0.01 * reference.abs().max()


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_model_answers_sensibly(precision: str) -> None:
    cache = Path(Settings.load(os.environ).model_cache).expanduser()
    loaded = load("smollm2-135m", default_model_ref(), "cpu", precision, cache / "models")
    assert loaded.precision == precision
    model = LocalModel(loaded, capacity=2)
    prompt = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_dict=False,
    )
    tokens = list(model.request(prompt, 16, Sampling(temperature=0)))
    assert "Paris" in model.tokenizer.decode(tokens)
    model.engine.close()


def test_quantization_is_refused_off_the_cpu(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CPU option"):
        load("m", default_model_ref(), "cuda", "int4", tmp_path)
    with pytest.raises(ValueError, match="LOCAL_DTYPE must be one of"):
        load("m", default_model_ref(), "cpu", "int3", tmp_path)
