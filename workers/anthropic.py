"""The Anthropic backend: OpenAI chat jobs through the official `anthropic` SDK's Messages
API, streamed (raw events) and reshaped into OpenAI chunks.

    backend = AnthropicBackend.from_env(os.environ)
    for item in backend.stream(job): ...     # Chunk(delta / tool_calls)..., then one Done

Request translation lives in `workers.anthropic_translate`; this module owns the SDK
clients (workers/clients.py), the stream events -> Chunk/Done mapping, and the table of SDK
errors -> RouterError (read as every provider's is: workers/failures.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import anthropic
import httpx2

from workers.anthropic_translate import AnthropicRequest, build_request
from workers.clients import ClientBackend
from workers.errors import UpstreamError
from workers.failures import (
    DROPPED,
    FAILED,
    TIMEOUT,
    UNREACHED,
    UNREADABLE,
    Answer,
    Answered,
    Failure,
    Table,
    caught,
    ended_early,
    translate,
)
from workers.protocol import ChatJob, Chunk, Done, Usage
from workers.providers import Endpoint, endpoint
from workers.upstream import retry_after_seconds, retrying

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


class AnthropicBackend(ClientBackend[anthropic.Anthropic]):
    """Streams chat jobs from the Anthropic Messages API; one per worker process, shared by
    its greenlets/threads (SDK clients are cached per endpoint: workers/clients.py)."""

    def new_client(self, ep: Endpoint, headers: Mapping[str, str]) -> anthropic.Anthropic:
        """The SDK's client, its own retries off: `retrying` decides."""
        return anthropic.Anthropic(
            api_key=ep.key,
            base_url=ep.base_url,
            default_headers=dict(headers),
            max_retries=0,
            timeout=anthropic.Timeout(ep.timeout, connect=ep.connect_timeout),
        )

    def stream(self, job: ChatJob) -> Iterator[Chunk | Done]:
        """Chunks of `job`'s answer, then one Done. A request the backend cannot translate
        fails here (400), before any HTTP call; upstream failures before the first chunk
        are retried by the worker's ROUTER_UPSTREAM_* policy."""
        request = build_request(job, self.env)
        ep = endpoint(job, self.env)
        client = self.client(ep)

        def open_stream() -> Iterator[Chunk | Done]:
            return stream_messages(client, request, ep)

        return retrying(open_stream, self.policy, deadline=job.deadline, what=job.backend)


def stream_messages(
    client: anthropic.Anthropic, request: AnthropicRequest, ep: Endpoint
) -> Iterator[Chunk | Done]:
    """One streamed Messages call (made on the first `next()`), as Chunks and a Done.

    Nothing is yielded before real content, so `retrying` may still retry a failure that
    comes first. Closing this generator closes the upstream response at once."""
    try:
        events = client.messages.create(**request.params, stream=True)
    except SDK_ERRORS as exc:
        raise translate(exc, FAILURES, ep) from None
    translator = StreamTranslator(request.json_tool)
    try:
        for event in guarded(events, ep):
            yield from translator.feed(event)
            if translator.done:
                return
        raise UpstreamError(ended_early(ep.backend, "`message_stop`"))
    finally:
        events.close()


def guarded(events: anthropic.Stream[Any], ep: Endpoint) -> Iterator[Any]:
    """The SDK's events, with a failure while reading them translated to a RouterError."""
    try:
        yield from events
    except SDK_ERRORS as exc:
        raise translate(exc, FAILURES, ep, midstream=True) from None


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
def _answer(exc: anthropic.APIStatusError) -> Answer:
    """An HTTP error answer, or an SSE `error` event (its status is then the stream's 200,
    and its error type says which status it stands for)."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    error = error if isinstance(error, dict) else {}
    kind = str(error.get("type") or "") or None
    message = str(error.get("message") or exc.message)
    if exc.status_code >= 400:
        retry_after = retry_after_seconds(exc.response.headers)
        return Answer(exc.status_code, message, label=kind, retry_after=retry_after)
    status = ERROR_TYPE_STATUS.get(kind or "", 502)
    return Answer(status, message, label=kind, in_stream=True)


#: What the SDK and its transport raise -> what the client sees (workers/failures.py).
FAILURES: Table = {
    anthropic.APIStatusError: Answered(_answer),
    anthropic.APITimeoutError: TIMEOUT,
    httpx2.TimeoutException: TIMEOUT,
    anthropic.APIConnectionError: UNREACHED,
    httpx2.TransportError: Failure(UpstreamError, DROPPED),
    json.JSONDecodeError: Failure(UpstreamError, UNREADABLE),
    anthropic.AnthropicError: FAILED,
}
SDK_ERRORS = caught(FAILURES)
