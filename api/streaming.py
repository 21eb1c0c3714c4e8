"""Event streams rendered for clients: OpenAI `chat.completion.chunk` SSE, the jobs API's
own SSE (`id:` per event, for Last-Event-ID resume) and WebSocket messages.

Every stream ends with exactly one terminal event: the job's own (`done`, `error`,
`cancelled`) or, when reading the job failed after the response started (Redis went away,
an unexpected error), an OpenAI error in the stream's format. None ends silently.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

import orjson
import redis

from api.errors import INTERNAL_ERROR, redis_unavailable
from api.schemas import chunk_body, usage_chunk_body
from api.serving import ChatService, Started, Submitted, completion_id, raise_for_final
from tasks.events import StreamEvent
from tasks.keys import Event
from workers.errors import RouterError, UpstreamError

log = logging.getLogger(__name__)

DONE_LINE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"  # an SSE comment: keeps proxies from closing an idle stream


def paced(events: Iterable[StreamEvent | None], interval: float) -> Iterator[StreamEvent | None]:
    """Pass events through; of the idle ticks (None), let one through per `interval`."""
    quiet_since = time.monotonic()
    for event in events:
        if event is not None:
            quiet_since = time.monotonic()
            yield event
        elif time.monotonic() - quiet_since >= interval:
            quiet_since = time.monotonic()
            yield None


def stream_failure(exc: Exception) -> RouterError:
    """The error a started stream ends with when reading its job raised `exc`: a RouterError
    as it is, Redis unreachable or failing as 503 (as before a stream starts), anything else
    as 500, logged with its traceback."""
    if isinstance(exc, RouterError):
        return exc
    if isinstance(exc, redis.RedisError):
        log.warning("stream ended by a Redis error: %r", exc)
        return redis_unavailable()
    log.error("stream ended by an unexpected error", exc_info=exc)
    return RouterError(INTERNAL_ERROR)


def cancel_quietly(service: ChatService, job_id: str) -> None:
    """Cancel a job whose reader is going away; if Redis is what failed, the cancel may
    fail too, and the job then ends at its deadline."""
    with contextlib.suppress(redis.RedisError):
        service.services.jobs.cancel(job_id)


def sse_data(body: Any) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


def sse_event(event: StreamEvent) -> bytes:
    """A jobs-API SSE frame: the stream entry id, the event type, its JSON payload."""
    data = orjson.dumps(event.payload())
    return f"id: {event.id}\nevent: {event.type.value}\n".encode() + b"data: " + data + b"\n\n"


class Resync:
    """After a worker was lost and the job restarted, the client has text it cannot take
    back: skip the regenerated prefix it already has, then carry on. Temperature-0 jobs
    regenerate the same text; if a sampled one diverges, the stream ends with an error.
    Tool calls cannot be replayed (providers mint new call ids), so a restart after one
    was sent ends the stream with that error too."""

    def __init__(self) -> None:
        self.sent = ""
        self.replay: str | None = None
        self.sent_tools = False

    def restart(self) -> None:
        self.replay = "" if self.sent or self.sent_tools else None

    def tools(self) -> None:
        """Tool-call fragments are about to go out."""
        if self.replay is not None and (self.sent_tools or len(self.replay) < len(self.sent)):
            raise UpstreamError("The job restarted after a worker failure and diverged.")
        self.replay, self.sent_tools = None, True

    def feed(self, delta: str) -> str:
        if self.replay is None:
            self.sent += delta
            return delta
        self.replay += delta
        if len(self.replay) <= len(self.sent):
            if not self.sent.startswith(self.replay):
                raise UpstreamError("The job restarted after a worker failure and diverged.")
            return ""
        if self.sent_tools or not self.replay.startswith(self.sent):
            raise UpstreamError("The job restarted after a worker failure and diverged.")
        out, self.sent, self.replay = self.replay[len(self.sent) :], self.replay, None
        return out


def chat_chunks(
    service: ChatService, started: Started, include_usage: bool, keepalive: float
) -> Iterator[bytes]:
    """The whole OpenAI SSE response for a started completion. The events are closed with
    the response, so that a watcher of them (api/accounting.py) learns at once that its
    reader stopped, when the client goes away mid-stream."""
    events = chain(started.head, started.rest)
    try:
        yield from _chat_sse(service, started.sub, include_usage, keepalive, events)
    finally:
        close = getattr(started.rest, "close", None)
        if close is not None:
            close()


def token_delta(event: StreamEvent, resync: Resync) -> dict[str, Any]:
    """The chunk `delta` of one token event: its new text and its tool-call fragments."""
    delta: dict[str, Any] = {}
    text = resync.feed(event.delta) if event.delta else ""
    if text:
        delta["content"] = text
    if event.tool_calls:
        resync.tools()
        delta["tool_calls"] = event.tool_calls
    return delta


def _chat_sse(
    service: ChatService,
    sub: Submitted,
    include_usage: bool,
    keepalive: float,
    events: Iterable[StreamEvent | None],
) -> Iterator[bytes]:
    cid, created, model = completion_id(sub.job_id), sub.created, sub.route.id

    def chunk(
        delta: dict[str, Any], finish: str | None = None, logprobs: list[Any] | None = None
    ) -> bytes:
        body = chunk_body(cid, created, model, delta, finish, include_usage, logprobs)
        return sse_data(body)

    finished, resync = False, Resync()
    try:
        yield chunk({"role": "assistant", "content": ""})
        for event in paced(events, keepalive):
            if event is None:
                yield KEEPALIVE
            elif event.type is Event.TOKEN:
                delta = token_delta(event, resync)
                if delta:
                    yield chunk(delta, logprobs=event.logprobs)
            elif event.type is Event.RESTART:
                resync.restart()
            elif event.type is Event.DONE:
                finished = True
                yield chunk({}, event.finish_reason)
                if include_usage and event.usage:
                    yield sse_data(usage_chunk_body(cid, created, model, event.usage))
                yield DONE_LINE
                return
            else:
                finished = True
                raise_for_final(event)
        raise RouterError("The job's event stream ended without a result.")
    except Exception as exc:  # noqa: BLE001 - every failure becomes the stream's error chunk
        finished = True
        cancel_quietly(service, sub.job_id)
        yield sse_data(stream_failure(exc).info().body())
    finally:
        if not finished:  # the client went away mid-stream: stop the generation
            cancel_quietly(service, sub.job_id)


def job_sse(
    service: ChatService, job_id: str, queue: str, deadline: float, after: str, keepalive: float
) -> Iterator[bytes]:
    """GET /v1/jobs/{id}/events: replay from `after`, then live, one frame per event, to
    the job's terminal event or an `event: error` frame."""
    yield b"retry: 1000\n\n"
    try:
        events = service.events(job_id, queue, deadline, after, owner=False)
        for event in paced(events, keepalive):
            yield KEEPALIVE if event is None else sse_event(event)
            if event is not None and event.type.terminal:
                return
        raise RouterError("The job's event stream ended without a result.")
    except Exception as exc:  # noqa: BLE001 - every failure becomes the stream's error frame
        yield b"event: error\n" + sse_data(stream_failure(exc).info().body())
