"""The Backend protocol every worker module implements, and how a worker builds one.

A backend turns a ChatJob into an iterator of Chunk, ending with one Done. It raises a
`workers.errors.RouterError` for anything the client should see. Closing the iterator
early (cancellation, deadline) must stop the work and free what it holds. An empty Chunk
is a keep-alive: nothing is sent, but the worker checks the job's deadline and cancel flag
on it, so a backend waiting on a silent upstream should yield one whenever it can.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import Protocol

from core.kinds import kind_info
from workers.errors import RouterError
from workers.protocol import ChatJob, Chunk, Done


class Backend(Protocol):
    """Anything that can stream a chat completion."""

    def stream(self, job: ChatJob) -> Iterator[Chunk | Done]: ...


def create_backend(kind: str, env: Mapping[str, str], concurrency: int | None = None) -> Backend:
    """Build the backend for `kind` (its row in core.kinds), configured from the
    worker's environment. The module is imported only now, so a provider worker never
    loads torch. Every backend class has `from_env(env, concurrency)`: `concurrency` is how
    many jobs the worker runs at once (the local backend decodes a batch that wide)."""
    info = kind_info(kind)
    if info is None:
        raise RouterError(
            f"This worker has no backend for kind `{kind}`.", code="unsupported_backend"
        )
    module, name = info.factory.split(":")
    backend: Backend = getattr(import_module(module), name).from_env(env, concurrency)
    return backend
