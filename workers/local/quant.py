"""Weight-only quantization for the CPU path (LOCAL_DTYPE=int8 / int4).

Weights are stored as int8 per output channel, or int4 in groups of 32 along the input
dimension, and multiplied by PyTorch's packed CPU kernels with bf16 activations; norms,
attention and the residual stream stay in float32. Memory traffic per token drops 4-8x,
which is what a CPU decoder is bound by.

Why groups of 32: the default model's GGUF holds its layer weights as Q4_1 — 4-bit values
with a scale and a minimum per block of 32 — so int4 in the same groups represents them
exactly (up to the bf16 scales). Its embeddings (tied to the output head) are Q8_0, so the
head gets int8.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

GROUP = 32


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with W int8, one scale per output channel."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(1).clamp(min=1e-8) / 127
        q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight_q", q)
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(flat, self.weight_q, self.scale)
        y = y.to(x.dtype).reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


class Int4Linear(nn.Module):
    """y = x W^T (+ b) with W int4 in groups of GROUP inputs, each with a scale and a zero."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        out_features, in_features = weight.shape
        groups = weight.reshape(out_features, in_features // GROUP, GROUP)
        low, high = groups.amin(-1), groups.amax(-1)
        scale = (high - low).clamp(min=1e-8) / 15
        q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15)
        q = q.to(torch.int32).reshape(out_features, in_features)
        # the kernel's convention: w = (q - 8) * scale + zero
        zero = low + 8 * scale
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        scales_zeros = torch.stack([scale, zero], -1).transpose(0, 1).contiguous()
        self.register_buffer("weight_q", packed)
        self.register_buffer("scales_zeros", scales_zeros.to(torch.bfloat16))
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            flat, self.weight_q, GROUP, self.scales_zeros
        )
        y = y.to(x.dtype).reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def _int4_or_int8(linear: nn.Linear) -> nn.Module:
    if linear.in_features % GROUP == 0:
        try:
            return Int4Linear(linear)
        except RuntimeError as exc:  # a shape the packed kernel refuses: int8 instead
            log.info("int4 not possible for %s: %s", tuple(linear.weight.shape), exc)
    return Int8Linear(linear)


def _swap(module: nn.Module, make: Any) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, make(child))
        else:
            _swap(child, make)


def quantize(model: Any, bits: int) -> Any:
    """Quantize a causal LM's linear layers in place: the decoder to `bits` (8 or 4), the
    output head to int8. Returns the model."""
    head = model.get_output_embeddings()
    body = model.get_decoder() if hasattr(model, "get_decoder") else model
    _swap(body, Int8Linear if bits == 8 else _int4_or_int8)
    if isinstance(head, nn.Linear):
        model.set_output_embeddings(Int8Linear(head))
    return model
