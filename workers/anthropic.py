"""The Anthropic backend: OpenAI chat jobs through the official `anthropic` SDK's Messages
API, streamed (raw events) and reshaped into OpenAI chunks.

    backend = AnthropicBackend.from_env(os.environ)
    for item in backend.stream(job): ...     # Chunk(delta / tool_calls)..., then one Done

Request translation lives in `workers.anthropic_translate`; this module owns the SDK
clients, the stream events -> Chunk/Done mapping, and SDK errors -> RouterError.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import anthropic
import httpx2

from workers.anthropic_translate import AnthropicRequest, build_request
from workers.errors import GatewayTimeoutError, RouterError, UpstreamError
from workers.protocol import ChatJob, Chunk, Done, Usage
from workers.providers import Endpoint, endpoint
from workers.upstream import RetryPolicy, retry_after_seconds, retrying, scrub, status_error

#: Anthropic stop_reason -> OpenAI finish_reason.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

#: Anthropic error `type` -> the HTTP status it stands for. An SSE `error` event arrives
#: after a 200, so its type is all that says what went wrong (overloaded_error = 529).
ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

ClientKey = tuple[str | None, str | None, tuple[tuple[str, str], ...], float, float]


class AnthropicBackend:
    """Streams chat jobs from the Anthropic Messages API; one per worker process, shared by
    its greenlets/threads (SDK clients are cached per endpoint under a lock)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self._clients: dict[ClientKey, anthropic.Anthropic] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AnthropicBackend:
        """The backend for a worker whose environment is `env` (keys, base URLs, retries)."""
        return cls(env)

    def client(self, ep: Endpoint) -> anthropic.Anthropic:
        """The SDK client for `ep`, made once. The SDK never retries: `retrying` does."""
        key: ClientKey = (ep.base_url, ep.key, tuple(sorted(ep.headers.items())), ep.timeout,
                          ep.connect_timeout)  # fmt: skip
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = anthropic.Anthropic(
                    api_key=ep.key,
                    base_url=ep.base_url,
                    default_headers=ep.headers,
                    max_retries=0,
                    timeout=anthropic.Timeout(ep.timeout, connect=ep.connect_timeout),
                )
                self._clients[key] = client
            return client

    def stream(self, job: ChatJob) -> Iterator[Chunk | Done]:
        """Chunks of `job`'s answer, then one Done. A request the backend cannot translate
        fails here (400), before any HTTP call; upstream failures before the first chunk
        are retried by the worker's ROUTER_UPSTREAM_* policy."""
        request = build_request(job, self.env)
        ep = endpoint(job, self.env)
        client = self.client(ep)

        def open_stream() -> Iterator[Chunk | Done]:
            return stream_messages(client, request, ep)

        policy = RetryPolicy.from_env(self.env)
        return retrying(open_stream, policy, deadline=job.deadline, what=job.backend)


def stream_messages(
    client: anthropic.Anthropic, request: AnthropicRequest, ep: Endpoint
) -> Iterator[Chunk | Done]:
    """One streamed Messages call (made on the first `next()`), as Chunks and a Done.

    Nothing is yielded before real content, so `retrying` may still retry a failure that
    comes first. Closing this generator closes the upstream response at once."""
    try:
        events = client.messages.create(**request.params, stream=True)
    except SDK_ERRORS as exc:
        raise upstream_error(exc, ep) from None
    translator = StreamTranslator(request.json_tool)
    try:
        for event in guarded(events, ep):
            yield from translator.feed(event)
            if translator.done:
                return
        raise UpstreamError(
            f"The {ep.backend} upstream ended its stream before `message_stop` (truncated)."
        )
    finally:
        events.close()


def guarded(events: anthropic.Stream[Any], ep: Endpoint) -> Iterator[Any]:
    """The SDK's events, with a failure while reading them translated to a RouterError."""
    try:
        yield from events
    except SDK_ERRORS as exc:
        raise upstream_error(exc, ep) from None


class StreamTranslator:
    """Anthropic raw stream events -> OpenAI-shaped Chunks, then one Done with the
    upstream's own token counts. Tool calls are numbered among tool calls only (text
    blocks take Anthropic block indexes too); the forced json_schema tool's input is text."""

    def __init__(self, json_tool: str | None = None) -> None:
        self.json_tool = json_tool
        self.tokens = {"input_tokens": 0, "cache_creation_input_tokens": 0,
                       "cache_read_input_tokens": 0, "output_tokens": 0}  # fmt: skip
        self.stop_reason: str | None = None
        self.tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index
        self.json_blocks: set[int] = set()
        self.done = False
        self.handlers: dict[str, Callable[[Any], Iterator[Chunk | Done]]] = {
            "message_start": self.message_start,
            "content_block_start": self.block_start,
            "content_block_delta": self.block_delta,
            "message_delta": self.message_delta,
            "message_stop": self.message_stop,
        }

    def feed(self, event: Any) -> Iterator[Chunk | Done]:
        """What one event adds (ping, content_block_stop and unknown events add nothing)."""
        handler = self.handlers.get(getattr(event, "type", ""))
        return handler(event) if handler else iter(())

    def count(self, usage: Any) -> None:
        for name in self.tokens:
            value = getattr(usage, name, None)
            if value is not None:
                self.tokens[name] = int(value)

    def message_start(self, event: Any) -> Iterator[Chunk | Done]:
        self.count(event.message.usage)
        return iter(())

    def block_start(self, event: Any) -> Iterator[Chunk | Done]:
        block = event.content_block
        if block.type == "text" and block.text:
            yield Chunk(delta=block.text)
        elif block.type == "tool_use" and self.json_tool and block.name == self.json_tool:
            self.json_blocks.add(event.index)
        elif block.type == "tool_use":
            index = self.tool_index[event.index] = len(self.tool_index)
            function = {"name": block.name, "arguments": ""}
            yield Chunk(tool_calls=[{"index": index, "id": block.id, "type": "function",
                                     "function": function}])  # fmt: skip

    def block_delta(self, event: Any) -> Iterator[Chunk | Done]:
        delta = event.delta
        if delta.type == "text_delta" and delta.text:
            yield Chunk(delta=delta.text)
        elif delta.type != "input_json_delta" or not delta.partial_json:
            return  # thinking, signature and citations deltas have no OpenAI counterpart
        elif event.index in self.json_blocks:
            yield Chunk(delta=delta.partial_json)
        elif event.index in self.tool_index:
            fragment = {"arguments": delta.partial_json}
            yield Chunk(tool_calls=[{"index": self.tool_index[event.index],
                                     "function": fragment}])  # fmt: skip

    def message_delta(self, event: Any) -> Iterator[Chunk | Done]:
        self.stop_reason = event.delta.stop_reason or self.stop_reason
        self.count(event.usage)
        return iter(())

    def message_stop(self, event: Any) -> Iterator[Chunk | Done]:
        self.done = True
        finish = FINISH_REASONS.get(self.stop_reason or "end_turn", "stop")
        if self.json_tool and finish == "tool_calls":
            finish = "stop"  # the forced json_schema tool is the answer, not a tool call
        t = self.tokens
        prompt = t["input_tokens"] + t["cache_creation_input_tokens"] + t["cache_read_input_tokens"]
        yield Done(finish, Usage(prompt, t["output_tokens"]))


# -- errors -----------------------------------------------------------------------------
def _from_status(exc: Exception, ep: Endpoint) -> RouterError:
    """An HTTP error answer, or an SSE `error` event (its status is then the stream's 200)."""
    assert isinstance(exc, anthropic.APIStatusError)
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    error = error if isinstance(error, dict) else {}
    kind = str(error.get("type") or "error")
    message = str(error.get("message") or exc.message)
    if exc.status_code >= 400:
        status, retry_after = exc.status_code, retry_after_seconds(exc.response.headers)
        text = f"The {ep.backend} upstream answered {status} ({kind}): {message}"
    else:
        status, retry_after = ERROR_TYPE_STATUS.get(kind, 502), None
        text = f"The {ep.backend} upstream failed mid-stream ({kind}): {message}"
    return status_error(status, scrub(text, ep.secrets()), retry_after=retry_after)


def _timed_out(exc: Exception, ep: Endpoint) -> RouterError:
    limits = f"connect {ep.connect_timeout:g}s, read {ep.timeout:g}s"
    return GatewayTimeoutError(f"The {ep.backend} upstream timed out ({limits}).")


def _unreachable(exc: Exception, ep: Endpoint) -> RouterError:
    return UpstreamError(f"Could not connect to the {ep.backend} upstream at {ep.base_url}.",
                         code="upstream_unreachable")  # fmt: skip


def _broken(exc: Exception, ep: Endpoint) -> RouterError:
    detail = scrub(str(exc) or type(exc).__name__, ep.secrets())
    return UpstreamError(f"The {ep.backend} upstream connection broke mid-stream: {detail}")


def _garbled(exc: Exception, ep: Endpoint) -> RouterError:
    detail = scrub(str(exc), ep.secrets())
    return UpstreamError(f"The {ep.backend} upstream sent an unreadable stream event: {detail}")


def _failed(exc: Exception, ep: Endpoint) -> RouterError:
    detail = scrub(str(exc) or type(exc).__name__, ep.secrets())
    return UpstreamError(f"The {ep.backend} upstream call failed: {detail}")


#: SDK / transport exception -> the RouterError builder; the first matching row wins
#: (APITimeoutError is an APIConnectionError, so it comes first).
FAILURES: tuple[tuple[type[Exception], Callable[[Exception, Endpoint], RouterError]], ...] = (
    (anthropic.APIStatusError, _from_status),
    (anthropic.APITimeoutError, _timed_out),
    (httpx2.TimeoutException, _timed_out),
    (anthropic.APIConnectionError, _unreachable),
    (httpx2.TransportError, _broken),
    (json.JSONDecodeError, _garbled),
    (anthropic.AnthropicError, _failed),
)
SDK_ERRORS = tuple(cls for cls, _ in FAILURES)


def upstream_error(exc: Exception, ep: Endpoint) -> RouterError:
    """The one translation of an SDK or transport exception into the client's RouterError;
    upstream messages are relayed with the endpoint's secrets scrubbed."""
    for cls, build in FAILURES:
        if isinstance(exc, cls):
            return build(exc, ep)
    return _failed(exc, ep)
