"""Job stream events: how they are written as Redis Stream fields and read back.

A stream holds, per attempt: optional `restart`, then `token`s with a `seq`, then one
terminal event (`done`, `error` or `cancelled`). Every terminal event may carry `usage`:
`done` the backend's own count; `error` and `cancelled` what the attempt had used when it
ended (workers.protocol.partial_usage), so a failed or cancelled completion is billed
too. A token carries text (`delta`) and, when the backend sent them, tool-call fragments
and logprobs as JSON. `Transcript` folds events into the answer so far, dropping a
previous attempt's text when a `restart` arrives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from tasks.keys import Event
from workers.protocol import Done, ErrorInfo, Usage


def token_fields(
    seq: int,
    delta: str,
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    fields = {"type": Event.TOKEN.value, "seq": str(seq), "delta": delta}
    if tool_calls:
        fields["tool_calls"] = orjson.dumps(tool_calls).decode()
    if logprobs:
        fields["logprobs"] = orjson.dumps(logprobs).decode()
    return fields


def _json_list(raw: str | None) -> list[dict[str, Any]] | None:
    return orjson.loads(raw) if raw else None


def done_fields(done: Done) -> dict[str, str]:
    return {
        "type": Event.DONE.value,
        "finish_reason": done.finish_reason,
        "usage": orjson.dumps(done.usage.to_dict()).decode(),
    }


def error_fields(error: ErrorInfo, usage: Usage | None = None) -> dict[str, str]:
    """A failed end; `usage`, when the worker had begun, is what it had used by then."""
    fields = {"type": Event.ERROR.value, "error": orjson.dumps(error.to_dict()).decode()}
    return _with_usage(fields, usage)


def cancelled_fields(usage: Usage | None = None) -> dict[str, str]:
    """A cancelled end; `usage` as for error_fields (none: cancelled before it began)."""
    return _with_usage({"type": Event.CANCELLED.value}, usage)


def _with_usage(fields: dict[str, str], usage: Usage | None) -> dict[str, str]:
    if usage is not None:
        fields["usage"] = orjson.dumps(usage.to_dict()).decode()
    return fields


def _usage(fields: dict[str, str]) -> Usage | None:
    raw = fields.get("usage")
    if not raw:
        return None
    u = orjson.loads(raw)
    return Usage(u["prompt_tokens"], u["completion_tokens"])


@dataclass(frozen=True)
class StreamEvent:
    """One decoded stream entry; `id` is the Redis entry id (SSE `id:` / Last-Event-ID)."""

    id: str
    type: Event
    seq: int = 0
    delta: str = ""
    attempt: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: list[dict[str, Any]] | None = None

    @classmethod
    def decode(cls, entry_id: str, fields: dict[str, str]) -> StreamEvent:
        kind = Event(fields["type"])
        if kind is Event.TOKEN:
            return cls(
                entry_id,
                kind,
                seq=int(fields["seq"]),
                delta=fields["delta"],
                tool_calls=_json_list(fields.get("tool_calls")),
                logprobs=_json_list(fields.get("logprobs")),
            )
        if kind is Event.RESTART:
            return cls(entry_id, kind, attempt=int(fields.get("attempt", 0)))
        if kind is Event.DONE:
            return cls(entry_id, kind, finish_reason=fields["finish_reason"], usage=_usage(fields))
        if kind is Event.ERROR:
            error = ErrorInfo.from_dict(orjson.loads(fields["error"]))
            return cls(entry_id, kind, error=error, usage=_usage(fields))
        return cls(entry_id, kind, usage=_usage(fields))

    def payload(self) -> dict[str, object]:
        """The event as the jobs SSE endpoint and the WebSocket send it."""
        if self.type is Event.TOKEN:
            body: dict[str, object] = {"seq": self.seq, "delta": self.delta}
            if self.tool_calls:
                body["tool_calls"] = self.tool_calls
            if self.logprobs:
                body["logprobs"] = self.logprobs
            return body
        if self.type is Event.RESTART:
            return {"attempt": self.attempt}
        if self.type is Event.DONE:
            usage = self.usage.to_dict() if self.usage else None
            return {"finish_reason": self.finish_reason, "usage": usage}
        if self.type is Event.ERROR and self.error:
            return self.error.body()
        return {}


class ToolCalls:
    """Streamed tool-call fragments merged into whole calls, as OpenAI clients merge them:
    by `index`, the first fragment carrying id, type and name, the rest more arguments."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, fragments: list[dict[str, Any]] | None) -> None:
        for frag in fragments or []:
            call = self._calls.setdefault(
                int(frag.get("index", 0)),
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            if frag.get("id"):
                call["id"] = frag["id"]
            if frag.get("type"):
                call["type"] = frag["type"]
            fn = frag.get("function") or {}
            call["function"]["name"] += fn.get("name") or ""
            call["function"]["arguments"] += fn.get("arguments") or ""

    def calls(self) -> list[dict[str, Any]]:
        """The merged calls in index order (the non-streaming `message.tool_calls`)."""
        return [self._calls[i] for i in sorted(self._calls)]


@dataclass
class Transcript:
    """The answer so far, folded from events in order."""

    parts: list[str] = field(default_factory=list)
    tools: ToolCalls = field(default_factory=lambda: ToolCalls())
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    last_id: str = "0-0"
    restarts: int = 0
    final: StreamEvent | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def finished(self) -> bool:
        return self.final is not None

    def add(self, event: StreamEvent) -> None:
        self.last_id = event.id
        if event.type is Event.TOKEN:
            self.parts.append(event.delta)
            self.tools.add(event.tool_calls)
            self.logprobs += event.logprobs or []
        elif event.type is Event.RESTART:
            self.parts.clear()
            self.tools = ToolCalls()
            self.logprobs = []
            self.restarts += 1
        else:
            self.final = event

    def extend(self, events: Iterable[StreamEvent]) -> None:
        for event in events:
            self.add(event)
