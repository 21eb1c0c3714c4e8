"""Job stream events: how they are written as Redis Stream fields and read back.

A stream holds, per attempt: optional `restart`, then `token`s with a `seq`, then one
terminal event (`done`, `error` or `cancelled`). `Transcript` folds events into the
answer so far, dropping a previous attempt's text when a `restart` arrives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from tasks.keys import Event
from workers.protocol import Done, ErrorInfo, Usage


def token_fields(seq: int, delta: str) -> dict[str, str]:
    return {"type": Event.TOKEN.value, "seq": str(seq), "delta": delta}


def done_fields(done: Done) -> dict[str, str]:
    return {
        "type": Event.DONE.value,
        "finish_reason": done.finish_reason,
        "usage": orjson.dumps(done.usage.to_dict()).decode(),
    }


def error_fields(error: ErrorInfo) -> dict[str, str]:
    return {"type": Event.ERROR.value, "error": orjson.dumps(error.to_dict()).decode()}


def cancelled_fields() -> dict[str, str]:
    return {"type": Event.CANCELLED.value}


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

    @classmethod
    def decode(cls, entry_id: str, fields: dict[str, str]) -> StreamEvent:
        kind = Event(fields["type"])
        if kind is Event.TOKEN:
            return cls(entry_id, kind, seq=int(fields["seq"]), delta=fields["delta"])
        if kind is Event.RESTART:
            return cls(entry_id, kind, attempt=int(fields.get("attempt", 0)))
        if kind is Event.DONE:
            u = orjson.loads(fields["usage"])
            usage = Usage(u["prompt_tokens"], u["completion_tokens"])
            return cls(entry_id, kind, finish_reason=fields["finish_reason"], usage=usage)
        if kind is Event.ERROR:
            return cls(entry_id, kind, error=ErrorInfo.from_dict(orjson.loads(fields["error"])))
        return cls(entry_id, kind)

    def payload(self) -> dict[str, object]:
        """The event as the jobs SSE endpoint and the WebSocket send it."""
        if self.type is Event.TOKEN:
            return {"seq": self.seq, "delta": self.delta}
        if self.type is Event.RESTART:
            return {"attempt": self.attempt}
        if self.type is Event.DONE:
            usage = self.usage.to_dict() if self.usage else None
            return {"finish_reason": self.finish_reason, "usage": usage}
        if self.type is Event.ERROR and self.error:
            return self.error.body()
        return {}


@dataclass
class Transcript:
    """The answer so far, folded from events in order."""

    parts: list[str] = field(default_factory=list)
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
        elif event.type is Event.RESTART:
            self.parts.clear()
            self.restarts += 1
        else:
            self.final = event

    def extend(self, events: Iterable[StreamEvent]) -> None:
        for event in events:
            self.add(event)
