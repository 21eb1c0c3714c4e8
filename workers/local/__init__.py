"""Local inference with transformers + torch on the best device here: mps > cuda > cpu,
with every concurrent job of a model sharing one continuously refilled batch.

    loading.py   find, convert (GGUF) and load models; device and precision
    engine.py    the batch engine: prefill, merge, decode step, evict
    sampling.py  OpenAI sampling per request; the worker's defaults and loop guard
    text.py      messages in, text deltas and stop strings out
    backend.py   LocalBackend: the worker's models serving ChatJobs
"""

from workers.local.backend import LocalBackend, LocalModel
from workers.local.loading import default_model_ref, dtype_for, model_specs, pick_device

__all__ = [
    "LocalBackend",
    "LocalModel",
    "default_model_ref",
    "dtype_for",
    "model_specs",
    "pick_device",
]
