"""Continuous batching for one model: every job on the worker joins one running batch.

One engine thread owns the model. Each step it admits waiting requests (one left-padded
prefill for all of them, merged into the running batch's KV cache), runs one decoding step
for every row at once, samples each row with its own settings, hands each token to its
request's queue, and drops rows that finished, failed or were cancelled, freeing their slot.
A request whose prefill or sampling fails ends alone; only a failed decoding step, shared by
every row, fails the whole batch.
Job threads only wait on their queue, so the Celery threads pool can run many at once.

Why not transformers' ContinuousBatchingManager: on CPU it gave 48 tok/s for 8 concurrent
128-token requests where this padded batch gave 102 (bench/batching_choice.py).
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from workers.local.sampling import Sampler

log = logging.getLogger(__name__)

IDLE_WAIT = 0.5  # seconds the idle engine waits for work before looking again


@dataclass(frozen=True)
class Finish:
    """The end of a request's token stream: why, or the error that ended it."""

    # "stop" (end-of-sequence), "length" (budget, or the sampler's loop guard), "cancelled"
    # or "error"
    reason: str
    error: BaseException | None = None


@dataclass(eq=False)
class Request:
    """One generation: the prompt's token ids, how many tokens it may make, its sampler.

    Iterating it yields token ids as the engine makes them, then stops; `finish` says why.
    """

    prompt: list[int]
    budget: int
    sampler: Sampler
    tokens: queue.SimpleQueue[int | Finish] = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False
    finish: Finish | None = None

    def __iter__(self) -> Iterator[int]:
        while True:
            item = self.tokens.get()
            if isinstance(item, Finish):
                self.finish = item
                if item.error is not None:
                    raise item.error
                return
            yield item


@dataclass(eq=False)
class _Row:
    request: Request
    position: int  # position id of the row's next input token
    next_token: int = -1
    produced: int = 0
    done: bool = False


class BatchEngine:
    """Runs every request of one model in a shared, continuously refilled batch."""

    def __init__(self, model: Any, eos_ids: set[int], device: str, capacity: int = 8) -> None:
        self.model, self.eos_ids, self.device = model, eos_ids, device
        self.capacity = max(1, capacity)
        params = _forward_params(model)
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        # prefill needs the logits of each prompt's last position only, not all of them
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._inbox: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def load(self) -> int:
        """Requests in the running batch now."""
        return len(self._rows)

    def submit(self, request: Request) -> Request:
        """Queue a request; it joins the batch at the next step boundary."""
        if self._closed:
            raise RuntimeError("the batch engine is closed")
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="batch-engine", daemon=True
                    )
                    self._thread.start()
                    atexit.register(self.close)
        self._inbox.put(request)
        return request

    @staticmethod
    def cancel(request: Request) -> None:
        """Drop the request at the next step boundary, freeing its slot."""
        request.cancelled = True

    def close(self) -> None:
        """Stop the engine thread (at exit, so torch is not torn down under it)."""
        self._closed = True
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._closed:
            try:
                self._admit(block=not self._rows)
                if self._rows:
                    self._step()
            except Exception as exc:
                # a bad step must not kill the engine: fail this batch, start afresh
                log.exception("batch step failed; failing %d requests", len(self._rows))
                for row in self._rows:
                    self._end(row, Finish("error", exc))
                self._rows, self._cache, self._mask = [], None, None

    def _admit(self, block: bool) -> None:
        waiting: list[Request] = []
        room = self.capacity - len(self._rows)
        while room > len(waiting):
            try:
                waiting.append(self._inbox.get(block=block and not waiting, timeout=IDLE_WAIT))
            except queue.Empty:
                break
        fresh = [r for r in waiting if not self._refused(r)]
        if not fresh:
            return
        try:
            with torch.inference_mode():
                self._prefill(fresh)
        except Exception as exc:
            # a prompt that breaks its prefill fails alone; the running batch is untouched
            # unless the new rows had already joined it (then the caller fails them all)
            running = {id(row.request) for row in self._rows}
            if any(id(r) in running for r in fresh):
                raise
            log.exception("prefill failed for %d requests", len(fresh))
            for request in fresh:
                request.tokens.put(Finish("error", exc))

    def _refused(self, request: Request) -> bool:
        if request.cancelled:
            request.tokens.put(Finish("cancelled"))
        return request.cancelled

    def _prefill(self, requests: list[Request]) -> None:
        """One forward pass over the new prompts, left-padded, merged into the batch."""
        width = max(len(r.prompt) for r in requests)
        ids = torch.zeros((len(requests), width), dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=True,
            **self._last_only,
        )
        rows = [_Row(r, position=len(r.prompt)) for r in requests]
        self._merge(getattr(out, self._cache_arg), mask.to(self.device), rows)
        self._sample(rows, out.logits[:, -1])

    def _merge(self, cache: Any, mask: torch.Tensor, rows: list[_Row]) -> None:
        if not self._rows:
            self._cache, self._mask, self._rows = cache, mask, rows
            return
        assert self._mask is not None
        width = max(self._mask.shape[1], mask.shape[1])
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_pad_left(old.keys, width), _pad_left(new.keys, width)])
            old.values = torch.cat([_pad_left(old.values, width), _pad_left(new.values, width)])
        self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)])
        self._rows = self._rows + rows

    def _step(self) -> None:
        """One decoding step for every row, after dropping the rows that are done."""
        live = [i for i, r in enumerate(self._rows) if not self._dropped(r)]
        if not live:
            self._rows, self._cache, self._mask = [], None, None
            return
        if len(live) < len(self._rows):
            self._select(live)
            self._rows = [self._rows[i] for i in live]
        self._trim()
        assert self._mask is not None
        n = len(self._rows)
        ids = torch.tensor([[r.next_token] for r in self._rows], device=self.device)
        positions = torch.tensor([[r.position] for r in self._rows], device=self.device)
        one = torch.ones((n, 1), dtype=self._mask.dtype, device=self.device)
        mask = torch.cat([self._mask, one], 1)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_arg: self._cache},
            )
        self._cache, self._mask = getattr(out, self._cache_arg), mask
        for row in self._rows:
            row.position += 1
        self._sample(self._rows, out.logits[:, -1])

    def _dropped(self, row: _Row) -> bool:
        if row.request.cancelled and not row.done:
            self._end(row, Finish("cancelled"))
        return row.done

    def _select(self, live: list[int]) -> None:
        """Keep only the rows at `live` in the mask and every cache layer."""
        assert self._mask is not None
        index = torch.tensor(live, device=self._mask.device)
        self._mask = self._mask.index_select(0, index)
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)

    def _trim(self) -> None:
        """Cut the leading columns that are padding in every row (their owner left)."""
        assert self._mask is not None
        start = int((self._mask.sum(0) > 0).nonzero()[0])
        if start:
            self._mask = self._mask[:, start:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, start:]
                layer.values = layer.values[:, :, start:]

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Each row's next token from its own sampler. A sampler that raises ends its own
        request with the error; the other rows carry on (its slot is freed next step)."""
        logits = logits.float().cpu()
        for i, row in enumerate(rows):
            try:
                token = row.request.sampler.next(logits[i])
            except Exception as exc:  # handed to its request, whose job raises it
                log.exception("sampling failed for one request; the batch goes on")
                self._end(row, Finish("error", exc))
                continue
            row.produced += 1
            row.request.tokens.put(token)
            if token in self.eos_ids:
                self._end(row, Finish("stop"))
            elif row.produced >= row.request.budget or row.request.sampler.looping:
                self._end(row, Finish("length"))  # out of budget, or stuck in a loop
            else:
                row.next_token = token

    def _end(self, row: _Row, finish: Finish) -> None:
        if not row.done:
            row.done = True
            row.request.tokens.put(finish)


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad dimension -2 (cache) or -1 (mask) on the left up to `width`."""
    dim = -1 if t.dim() == 2 else -2
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _forward_params(model: Any) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)
