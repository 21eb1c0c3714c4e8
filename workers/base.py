"""The Backend protocol every worker module implements, and the factory that picks one.

A backend turns a ChatJob into an iterator of Chunk, ending with one Done. It raises a
`workers.errors.RouterError` for anything the client should see. Closing the iterator
early (cancellation, deadline) must stop the work and free what it holds. An empty Chunk
is a keep-alive: nothing is sent, but the worker checks the job's deadline and cancel flag
on it, so a backend waiting on a silent upstream should yield one whenever it can.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from workers.errors import RouterError
from workers.protocol import ChatJob, Chunk, Done


class Backend(Protocol):
    """Anything that can stream a chat completion."""

    def stream(self, job: ChatJob) -> Iterator[Chunk | Done]: ...


BackendFactory = Callable[[Mapping[str, str]], Backend]


def _local(env: Mapping[str, str]) -> Backend:
    from workers.local import LocalBackend

    return LocalBackend.from_env(env)


def _openai_compat(env: Mapping[str, str]) -> Backend:
    from workers.openai_compat import OpenAICompatBackend

    return OpenAICompatBackend.from_env(env)


def _anthropic(env: Mapping[str, str]) -> Backend:
    from workers.anthropic import AnthropicBackend

    return AnthropicBackend.from_env(env)


def _google(env: Mapping[str, str]) -> Backend:
    from workers.google import GoogleBackend

    return GoogleBackend.from_env(env)


def _llmd(env: Mapping[str, str]) -> Backend:
    from workers.llmd import LlmdBackend

    return LlmdBackend.from_env(env)


#: backend kind -> factory(env). Imports are deferred so a provider worker never loads torch.
FACTORIES: dict[str, BackendFactory] = {
    "local": _local,
    "openai-compatible": _openai_compat,
    "anthropic": _anthropic,
    "google": _google,
    "llm-d": _llmd,
}


def create_backend(kind: str, env: Mapping[str, str]) -> Backend:
    """Build the backend for `kind`, configured from the worker's environment."""
    try:
        factory = FACTORIES[kind]
    except KeyError:
        raise RouterError(
            f"This worker has no backend for kind `{kind}`.", code="unsupported_backend"
        ) from None
    return factory(env)
