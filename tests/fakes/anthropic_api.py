"""A fake Anthropic Messages API: POST /v1/messages, streamed (SSE with `event:` lines and
the documented event sequence, `ping` included) or not, with Anthropic's error bodies.

It answers from the request:
- no key (`x-api-key`, or `Authorization: Bearer` as SDK 2.x sends it) -> 401; no dated
  `anthropic-version` -> 400; a key starting `sk-ant-revoked`
  -> 401 whose message echoes the key (a planted leak, to test scrubbing);
- a malformed body (roles, empty text blocks, unanswered tool_use, temperature > 1, ...)
  -> 400 invalid_request_error, as the real API would;
- a model starting `claude-missing` -> 404 not_found_error;
- tool_choice {"type":"tool"} -> that tool's tool_use (input made from its schema);
- tools, and a last user turn of text -> "Let me check." then a tool_use for each tool
  named in that text (the first tool if none is; one only if parallel use is disabled);
- a last user turn carrying tool_result -> a text that quotes the tool result;
- a system prompt mentioning JSON -> a JSON object as text;
- the word FORBIDDEN -> a refusal; the word CACHED -> cache read/creation token counts;
- else "Hello! You said: <last user text>"; stop_sequences and max_tokens (one token per
  word or JSON fragment) cut it as the real API would.

Usage: input_tokens = `count_input(body)`; output_tokens = the number of deltas sent.
Tests script faults with `fail_next` and build streams with `answer_frames`, `error_event`.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.server import FakeServer, Reply, Request, sse

VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")  # anthropic-version: 2023-06-01, 2026-10-21, ...
REVOKED_PREFIX = "sk-ant-revoked"
MISSING_MODEL_PREFIX = "claude-missing"
CACHE_CREATION, CACHE_READ = 11, 13
JSON_OBJECT_HINT = "JSON"  # a system prompt containing it gets a JSON object back
SSE_TYPE = "text/event-stream; charset=utf-8"
_ids = itertools.count(1)


@dataclass
class Block:
    """One content block of the answer: text, or a tool_use with its input."""

    type: str
    text: str = ""
    name: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: f"toolu_{next(_ids):024d}")

    def pieces(self) -> list[str]:
        """The deltas it streams as: words of text, or ~8-char JSON fragments."""
        if self.type == "text":
            return re.findall(r"\S+\s*", self.text)
        raw = json.dumps(self.input)
        return [raw[i : i + 8] for i in range(0, len(raw), 8)]


@dataclass
class Answer:
    blocks: list[Block]
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None


# -- error replies ----------------------------------------------------------------------
def error_body(kind: str, message: str) -> dict[str, Any]:
    """Anthropic's error shape: {"type":"error","error":{"type","message"},"request_id"}."""
    return {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": f"req_{next(_ids):024d}",
    }


def error_reply(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None, **reply: Any
) -> Reply:
    """An HTTP error answer as the real API sends it (with a request-id header)."""
    hdrs = {"request-id": f"req_{next(_ids):024d}", **(headers or {})}
    return Reply(status, error_body(kind, message), hdrs, **reply)


def error_event(kind: str = "overloaded_error", message: str = "Overloaded") -> bytes:
    """An SSE `error` event, as sent mid-stream after a 200."""
    return sse(
        [{"type": "error", "error": {"type": kind, "message": message}}], event_names=["error"]
    )[0]


# -- requests -> answers ----------------------------------------------------------------
class BadRequest(Exception):
    """The body breaks a rule of the real API: answer 400 invalid_request_error."""


def count_input(body: dict[str, Any]) -> int:
    """The fake's input token count: whitespace-separated words of system + messages JSON."""
    return len(json.dumps([body.get("system"), body.get("messages")]).split())


def sample(schema: dict[str, Any]) -> Any:
    """A value that fits a JSON schema (the fake model's tool input)."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if kind == "object":
        return {k: sample(v) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [sample(schema.get("items") or {"type": "string"})]
    return {"string": "Paris", "integer": 3, "number": 2.5, "boolean": True}.get(kind)


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [b.get("text", "") for b in content or [] if b.get("type") == "text"]


def _check_block(block: dict[str, Any], where: str) -> None:
    kind = block.get("type")
    if kind == "text" and not block.get("text"):
        raise BadRequest(f"{where}: text content blocks must be non-empty")
    if kind == "image":
        source = block.get("source") or {}
        ok = (source.get("type") == "url" and source.get("url")) or (
            source.get("type") == "base64" and source.get("media_type") and source.get("data")
        )
        if not ok:
            raise BadRequest(f"{where}.source: invalid image source")
    if kind == "tool_use" and not (
        block.get("id") and block.get("name") and isinstance(block.get("input"), dict)
    ):
        raise BadRequest(f"{where}: tool_use needs id, name and an input object")
    if kind not in ("text", "image", "tool_use", "tool_result"):
        raise BadRequest(f"{where}.type: unknown content block type {kind!r}")


def validate(body: Any) -> None:
    """The subset of the real API's request rules that a translation bug would break."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise BadRequest(f"{name}: Field required")
    if not isinstance(body["messages"], list) or not body["messages"]:
        raise BadRequest("messages: at least one message is required")
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        raise BadRequest("max_tokens: must be a positive integer")
    if not 0 <= body.get("temperature", 0) <= 1:
        raise BadRequest("temperature: range: 0..1")
    if not isinstance(body.get("system", ""), str):
        raise BadRequest("system: expected a string")
    pending: set[str] = set()  # tool_use ids the next user turn must answer
    for i, msg in enumerate(body["messages"]):
        if msg.get("role") not in ("user", "assistant"):
            raise BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = msg.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not blocks:
            raise BadRequest(f"messages.{i}: all messages must have non-empty content")
        for j, block in enumerate(blocks):
            _check_block(block, f"messages.{i}.content.{j}")
        kinds = [b["type"] == "tool_result" for b in blocks]
        if kinds != sorted(kinds, reverse=True):
            raise BadRequest(f"messages.{i}: tool_result blocks must come first in the content")
        results = {b["tool_use_id"] for b in blocks if b["type"] == "tool_result"}
        if pending - results or results - pending:
            raise BadRequest(
                f"messages.{i}: `tool_use` ids were found without `tool_result` "
                f"blocks immediately after: {sorted(pending ^ results)}"
            )
        pending = {b["id"] for b in blocks if b["type"] == "tool_use"}
    if pending:
        raise BadRequest("messages: the last assistant tool_use has no tool_result")
    names = {t.get("name") for t in body.get("tools") or []}
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "tool" and choice.get("name") not in names:
        raise BadRequest(f"tool_choice.name: no tool named {choice.get('name')!r}")


def decide(body: dict[str, Any]) -> Answer:
    """The fake model's answer to a valid request."""
    last = body["messages"][-1]
    content = last["content"]
    results = [] if isinstance(content, str) else [b for b in content if b["type"] == "tool_result"]
    said = " ".join(_texts(content))
    tools = {t["name"]: t for t in body.get("tools") or []}
    choice = body.get("tool_choice") or {"type": "auto"}
    if choice["type"] == "tool":
        tool = tools[choice["name"]]
        return Answer(
            [Block("tool_use", name=tool["name"], input=sample(tool["input_schema"]))], "tool_use"
        )
    if tools and choice["type"] != "none" and not results and last["role"] == "user":
        named = [t for name, t in tools.items() if name in said] or [next(iter(tools.values()))]
        if choice.get("disable_parallel_tool_use"):
            named = named[:1]
        calls = [Block("tool_use", name=t["name"], input=sample(t["input_schema"])) for t in named]
        return Answer([Block("text", "Let me check."), *calls], "tool_use")
    if results:
        quoted = "; ".join(str(r.get("content", "")) for r in results)
        return Answer([Block("text", f"The tool said: {quoted}.")])
    if "FORBIDDEN" in said:
        return Answer([Block("text", "I can't help with that.")], "refusal")
    if JSON_OBJECT_HINT in (body.get("system") or ""):
        return Answer([Block("text", json.dumps({"answer": said}))])
    return Answer([Block("text", f"Hello! You said: {said}")])


def limit(answer: Answer, body: dict[str, Any]) -> Answer:
    """Apply stop_sequences to text, then max_tokens to all deltas (one token each)."""
    for block in answer.blocks:
        for stop in body.get("stop_sequences") or []:
            if block.type == "text" and stop in block.text:
                block.text = block.text[: block.text.index(stop)]
                return Answer(
                    [
                        b
                        for b in answer.blocks[: answer.blocks.index(block) + 1]
                        if b.type != "text" or b.text
                    ],
                    "stop_sequence",
                    stop,
                )
    budget, kept = body["max_tokens"], []
    for block in answer.blocks:
        pieces = block.pieces()
        if len(pieces) > budget:
            if block.type == "text" and budget:
                kept.append(Block("text", "".join(pieces[:budget])))
            return Answer(kept, "max_tokens")
        budget -= len(pieces)
        kept.append(block)
    return answer


# -- answers -> wire --------------------------------------------------------------------
def usage(body: dict[str, Any]) -> dict[str, int]:
    cached = "CACHED" in json.dumps(body.get("messages"))
    return {
        "input_tokens": count_input(body),
        "cache_creation_input_tokens": CACHE_CREATION if cached else 0,
        "cache_read_input_tokens": CACHE_READ if cached else 0,
    }


def message_events(answer: Answer, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The documented event sequence for `answer` (ping after the first block start)."""
    start = {
        "id": f"msg_{next(_ids):024d}",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": body["model"],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage(body), "output_tokens": 1},
    }
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    sent = 0
    for i, block in enumerate(answer.blocks):
        head: dict[str, Any]
        if block.type == "text":
            head = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in block.pieces()]
        else:
            head = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": p} for p in ["", *block.pieces()]
            ]
        events.append({"type": "content_block_start", "index": i, "content_block": head})
        if i == 0:
            events.append({"type": "ping"})
        events += [{"type": "content_block_delta", "index": i, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": i})
        sent += len(block.pieces())
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence},
            "usage": {"output_tokens": sent},
        }
    )
    events.append({"type": "message_stop"})
    return events


def frames(events: Iterable[dict[str, Any]]) -> list[bytes]:
    """SSE frames with `event:` lines naming each event by its type."""
    events = list(events)
    return sse(events, event_names=[e["type"] for e in events])


def answer_frames(text: str, *, model: str = "claude-test", max_tokens: int = 1024) -> list[bytes]:
    """The frames of a plain text answer, for tests that script a stream themselves."""
    body = {"model": model, "max_tokens": max_tokens, "messages": []}
    return frames(message_events(Answer([Block("text", text)]), body))


def paced(chunks: list[bytes], delay: float, sent: list[int]) -> Iterator[bytes]:
    """`chunks` one every `delay` s, counting each into `sent` (to see when a client left)."""
    for chunk in chunks:
        sent.append(1)
        yield chunk
        time.sleep(delay)


def message_body(answer: Answer, body: dict[str, Any]) -> dict[str, Any]:
    """The non-streaming Message object."""
    content = [
        {"type": "text", "text": b.text}
        if b.type == "text"
        else {"type": "tool_use", "id": b.id, "name": b.name, "input": b.input}
        for b in answer.blocks
    ]
    output = sum(len(b.pieces()) for b in answer.blocks)
    return {
        "id": f"msg_{next(_ids):024d}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": answer.stop_reason,
        "stop_sequence": answer.stop_sequence,
        "usage": {**usage(body), "output_tokens": output},
    }


def api_key(headers: dict[str, str]) -> str | None:
    """The key as `x-api-key` (the documented header) or `Authorization: Bearer`, which
    anthropic SDK 2.x sends an `api_key` as."""
    bearer = headers.get("authorization", "")
    return headers.get("x-api-key") or (bearer[7:] if bearer.startswith("Bearer ") else None)


def messages(req: Request) -> Reply:
    """POST /v1/messages."""
    key = api_key(req.headers)
    if not key:
        return error_reply(401, "authentication_error", "x-api-key header is required")
    if key.startswith(REVOKED_PREFIX):
        return error_reply(401, "authentication_error", f"invalid x-api-key: {key}")
    if not VERSION.match(req.headers.get("anthropic-version", "")):
        return error_reply(400, "invalid_request_error", "anthropic-version: header is required")
    try:
        validate(req.body)
    except BadRequest as exc:
        return error_reply(400, "invalid_request_error", str(exc))
    body = req.body
    if str(body["model"]).startswith(MISSING_MODEL_PREFIX):
        return error_reply(404, "not_found_error", f"model: {body['model']}")
    answer = limit(decide(body), body)
    request_id = {"request-id": f"req_{next(_ids):024d}"}
    if not body.get("stream"):
        return Reply(200, message_body(answer, body), request_id)
    return Reply(
        200, headers=request_id, chunks=frames(message_events(answer, body)), content_type=SSE_TYPE
    )


def start_anthropic_fake() -> FakeServer:
    """A started fake; point the SDK's base_url (ANTHROPIC_BASE_URL) at its `.url`."""
    return FakeServer({("POST", "/v1/messages"): messages}).start()
