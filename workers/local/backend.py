"""The local backend: the models this worker loaded, each behind its batch engine, serving
OpenAI-style chat jobs as streams of text chunks."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from core.settings import Settings
from workers.errors import ContextLengthExceeded, ServiceUnavailableError
from workers.local.engine import BatchEngine, Finish, Request
from workers.local.loading import Loaded, load, model_specs, pick_device
from workers.local.sampling import Defaults
from workers.local.text import Decoder, plain_message, reject_unsupported
from workers.protocol import ChatJob, Chunk, Done, Sampling, Usage

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_TOKENS = 512
DEFAULT_BATCH = 8


def off_main_thread(work: Callable[[], T]) -> T:
    """Run torch work on a helper thread and wait for it.

    Once the process's main thread has run a parallel torch op, its OpenMP thread team
    stays, and every other thread's parallel ops slow down: the int8/int4 CPU kernels ran
    3x slower on the engine thread (46 vs 131 us per layer). So the main thread of a worker
    never computes: loading, quantizing and warm-up happen here, decoding on the engine.
    """
    box: list[T] = []
    errors: list[Exception] = []

    def run() -> None:
        try:
            box.append(work())
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who raises it
            errors.append(exc)

    helper = threading.Thread(target=run, name="model-loader")
    helper.start()
    helper.join()
    if errors:
        raise errors[0]
    return box[0]


class LocalModel:
    """One loaded model and its engine."""

    def __init__(
        self,
        loaded: Loaded,
        capacity: int = DEFAULT_BATCH,
        defaults: Defaults | None = None,
    ) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        config = loaded.model.config
        self.context_window = int(getattr(config, "max_position_embeddings", 2048))
        self.vocab = int(config.vocab_size)
        eos = loaded.model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {i for i in [*eos_ids, self.tokenizer.eos_token_id] if i is not None}
        self.defaults = defaults or Defaults()
        self.engine = BatchEngine(loaded.model, self.eos_ids, loaded.device, capacity)
        self.requests: dict[str, Request] = {}  # running job id -> its request

    def prompt_ids(self, job: ChatJob) -> list[int]:
        """Apply the model's chat template to the job's messages."""
        messages = [plain_message(m, job.model) for m in job.messages]
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)

    def request(self, prompt: list[int], budget: int, sampling: Sampling) -> Request:
        """Start generating; iterate the result for token ids."""
        sampler = self.defaults.sampler(sampling, self.vocab)
        return self.engine.submit(Request(prompt, budget, sampler))

    def stream(self, job: ChatJob) -> Iterator[Chunk | Done]:
        """Chunks of text as the batch produces this job's tokens; closing stops it."""
        reject_unsupported(job)
        prompt = self.prompt_ids(job)
        room = self.context_window - len(prompt)
        if room <= 0:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_window} tokens. "
                f"However, your messages resulted in {len(prompt)} tokens.",
                param="messages",
            )
        budget = min(job.sampling.max_tokens or DEFAULT_MAX_TOKENS, room)
        request = self.request(prompt, budget, job.sampling)
        self.requests[job.id] = request
        decoder = Decoder(self.tokenizer, job.sampling.stop)
        produced, stopped = 0, False
        try:
            for token_id in request:
                produced += 1
                if token_id in self.eos_ids:
                    continue  # the engine ends the request right after it
                delta, stopped = decoder.push(token_id)
                if delta:
                    yield Chunk(delta)
                if stopped:
                    break
            tail = "" if stopped else decoder.flush()  # held back for a stop that never came
            if tail:
                yield Chunk(tail)
            finish = "stop" if stopped or request.finish is None else request.finish.reason
            yield Done(finish, Usage(len(prompt), produced))
        finally:
            BatchEngine.cancel(request)  # a no-op once finished; frees the slot otherwise
            self.requests.pop(job.id, None)

    def cancel(self, job_id: str) -> bool:
        """Stop a job of this model now, even before its first token (waiting for a slot or
        prefilling): its stream ends at once and the engine drops the row at its next step."""
        request = self.requests.get(job_id)
        if request is None:
            return False
        BatchEngine.cancel(request)
        request.tokens.put(Finish("cancelled"))  # wakes the job's thread, which then returns
        return True

    def warm_up(self) -> None:
        """Two short generations side by side, so the first real requests pay no lazy
        start-up (kernels pick their code paths per shape on first use)."""
        prompt = self.tokenizer.encode("Hello! " * 24)
        requests = [self.request(prompt, 4, Sampling(temperature=0)) for _ in range(2)]
        for request in requests:
            list(request)


class LocalBackend:
    """Every local model of this worker, by the name registry models use as `upstream`."""

    def __init__(self, models: dict[str, LocalModel]) -> None:
        self.models = models

    @classmethod
    def from_env(cls, env: Mapping[str, str], concurrency: int | None = None) -> LocalBackend:
        """Load LOCAL_MODELS / LOCAL_MODEL (default: SmolLM2) on LOCAL_DEVICE at LOCAL_DTYPE,
        with LOCAL_MAX_BATCH concurrent requests per model (unset: the worker's
        `concurrency`, else DEFAULT_BATCH) and the LOCAL_* sampling defaults, and warm each
        one up."""
        settings = Settings.load(env)
        cache = Path(settings.model_cache).expanduser()
        device = pick_device(settings.local_device)
        precision = settings.local_dtype
        capacity = settings.local_max_batch or concurrency or DEFAULT_BATCH
        defaults = Defaults.from_settings(settings)
        models = {}
        for name, ref in model_specs(settings):

            def prepare(name: str = name, ref: str = ref) -> LocalModel:
                loaded = load(name, ref, device, precision, cache / "models")
                model = LocalModel(loaded, capacity, defaults)
                model.warm_up()
                return model

            models[name] = off_main_thread(prepare)
        return cls(models)

    def model_for(self, job: ChatJob) -> LocalModel:
        try:
            return self.models[job.upstream_model]
        except KeyError:
            raise ServiceUnavailableError(
                f"This worker does not serve `{job.upstream_model}`; it serves "
                f"{', '.join(sorted(self.models))}.",
                code="model_not_loaded",
            ) from None

    def stream(self, job: ChatJob) -> Iterator[Chunk | Done]:
        return self.model_for(job).stream(job)

    def cancel(self, job_id: str) -> bool:
        """Stop a running job at once (tasks.stopper); False if no model here runs it."""
        return any(model.cancel(job_id) for model in self.models.values())

    def announce(self) -> dict[str, Any]:
        """What the heartbeat tells the cluster: models, device, precision, capacity, load."""
        first = next(iter(self.models.values()))
        return {
            "models": sorted(self.models),
            "device": first.loaded.device,
            "dtype": first.loaded.precision,
            "capacity": sum(m.engine.capacity for m in self.models.values()),
            "load": sum(m.engine.load for m in self.models.values()),
        }
