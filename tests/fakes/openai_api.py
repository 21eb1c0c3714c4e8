"""A fake OpenAI Chat Completions API (and vLLM's extras), speaking the documented wire format.

    POST /v1/chat/completions   streaming (`data: {chat.completion.chunk}` ... `data: [DONE]`,
                                a usage chunk with `choices: []` when
                                stream_options.include_usage) or one `chat.completion` body
    GET  /v1/models             {"object": "list", "data": [model, ...]} (+ max_model_len: vLLM)
    GET  /health                200, empty (vLLM); `health_status` scripts another answer

The answer follows from the request: `tools` -> tool calls streamed in argument fragments;
a tool result last -> text quoting it; `response_format` json_object / json_schema -> JSON
text; `logprobs` -> logprobs.content entries; `stop` and the max-tokens field cut the text.
Magic words in the last user message script the rest (see MAGIC). Errors use OpenAI's body
`{"error": {"message", "type", "param", "code"}}`. Every request is recorded, and the
Authorization headers are counted, so tests can prove the key went only as a bearer.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from tests.fakes.server import FakeServer, Reply, Request, sse

DEFAULT_MODELS: dict[str, int | None] = {"gpt-4o-mini": 128000, "tiny-ctx": 16}
CREATED = 1_700_000_000

#: Words in the last user message that script the answer.
BLOCK = "SAFETY_BLOCK"  # finish_reason content_filter, no text
DIE = "DIE_MIDWAY"  # the connection drops after the role chunk and two text chunks
STREAM_ERROR = "STREAM_ERROR"  # two text chunks, then `data: {"error": {...}}`
TRUNCATE = "TRUNCATE"  # two text chunks, then a clean end without finish_reason or [DONE]
SLOW = "SLOW_STREAM"  # 1000 text chunks, 20 ms apart; `stream_closed` set when it ends
NO_USAGE = "NO_USAGE"  # behaves like a server that ignores stream_options
MAGIC = (BLOCK, DIE, STREAM_ERROR, TRUNCATE, SLOW, NO_USAGE)


def openai_error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """A reply with OpenAI's error body."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return Reply(status, body, headers=dict(headers or {}))


def words(text: str) -> list[str]:
    """The fake's tokens: words with their trailing spaces."""
    return re.findall(r"\S+\s*", text)


def text_of(content: Any) -> str:
    """A message's text: a string or the text parts of a part list."""
    if isinstance(content, str):
        return content
    parts = content or []
    return " ".join(p.get("text", "") for p in parts if isinstance(p, dict))


class OpenAIFake(FakeServer):
    """The fake; `models` {id: context window or None}; `api_key` None accepts anything."""

    def __init__(
        self,
        models: dict[str, int | None] | None = None,
        api_key: str | None = None,
        vllm: bool = False,
    ) -> None:
        super().__init__(
            {
                ("POST", "/v1/chat/completions"): self.chat,
                ("GET", "/v1/models"): self.list_models,
                ("GET", "/health"): self.health,
            }
        )
        self.models = dict(DEFAULT_MODELS if models is None else models)
        self.api_key, self.vllm = api_key, vllm
        self.health_status = 200
        self.authorizations: Counter[str] = Counter()
        self.usages: list[dict[str, int]] = []  # the usage of each completion, as reported
        self.stream_closed = threading.Event()
        self.slow_served = 0
        self.latency = 0.0  # seconds before answering each chat request (a slow backend)

    def reset(self) -> None:
        """Forget requests, faults, counts and scripted health (between tests)."""
        super().reset()
        with self._lock:
            self.authorizations.clear()
            self.usages.clear()
        self.health_status, self.slow_served = 200, 0
        self.stream_closed.clear()

    # -- auth --------------------------------------------------------------------------
    def _refuse(self, req: Request) -> Reply | None:
        auth = req.headers.get("authorization")
        if auth is not None:
            self.authorizations[auth] += 1
        if self.api_key is None:
            return None
        if not auth:
            return openai_error(
                401,
                "You didn't provide an API key. You need to provide your "
                "API key in an Authorization header using Bearer auth.",
            )
        given = auth.removeprefix("Bearer ")
        if given != self.api_key:
            # The real API echoes (part of) the key it got: the router must scrub it.
            return openai_error(
                401,
                f"Incorrect API key provided: {given}. You can find your "
                "API key at https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        return None

    def bearer_only(self, key: str) -> bool:
        """True if every chat request carried `key` as its bearer and nowhere else."""
        chats = [r for r in self.requests if r.path == "/v1/chat/completions"]
        for r in chats:
            others = {k: v for k, v in r.headers.items() if k != "authorization"}
            if r.headers.get("authorization") != f"Bearer {key}":
                return False
            if key in json.dumps(r.body) or key in json.dumps(others) or key in r.query:
                return False
        return bool(chats)

    # -- routes ------------------------------------------------------------------------
    def health(self, req: Request) -> Reply:
        return Reply(self.health_status, None)

    def list_models(self, req: Request) -> Reply:
        refused = self._refuse(req)
        if refused:
            return refused
        data = []
        for model_id, size in self.models.items():
            entry: dict[str, Any] = {
                "id": model_id,
                "object": "model",
                "created": CREATED,
                "owned_by": "vllm" if self.vllm else "system",
            }
            if self.vllm:
                entry["max_model_len"] = size
            data.append(entry)
        return Reply(200, {"object": "list", "data": data})

    def chat(self, req: Request) -> Reply:
        refused = self._refuse(req) or self._invalid(req.body)
        if refused:
            return refused
        if self.latency:
            time.sleep(self.latency)
        body = req.body
        answer = Answer(body)
        with self._lock:
            self.usages.append(answer.usage)
        if not body.get("stream"):
            return Reply(200, answer.completion())
        magic = answer.magic
        include = (body.get("stream_options") or {}).get("include_usage") and magic != NO_USAGE
        frames = answer.frames(bool(include))
        if magic == DIE:
            return Reply(200, chunks=frames, content_type="text/event-stream", abort_after=3)
        if magic == STREAM_ERROR:
            error = {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
            frames = [*frames[:3], *sse([error])]
        if magic == TRUNCATE:
            frames = frames[:3]
        if magic == SLOW:
            return Reply(200, chunks=self._slow(frames[0]), content_type="text/event-stream")
        return Reply(200, chunks=frames, content_type="text/event-stream")

    def _invalid(self, body: Any) -> Reply | None:
        if not isinstance(body, dict) or not body.get("messages"):
            return openai_error(400, "'messages' is a required property", param="messages")
        model = body.get("model")
        if model not in self.models:
            return openai_error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        window, used = self.models[model], prompt_tokens(body["messages"])
        if window is not None and used > window:
            return openai_error(
                400,
                f"This model's maximum context length is {window} tokens. "
                f"However, your messages resulted in {used} tokens. Please "
                "reduce the length of the messages.",
                param="messages",
                code="context_length_exceeded",
            )
        return None

    def _slow(self, head: bytes) -> Iterator[bytes]:
        """A long stream; `stream_closed` is set once the client hangs up (a write fails)."""
        try:
            yield head
            for i in range(1000):
                self.slow_served = i + 1
                yield chunk_frame({"content": f"tick{i} "})
                time.sleep(0.02)
        finally:
            self.stream_closed.set()


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The fake's prompt count: 3 per message plus its words (deterministic, not an estimate
    anyone else would make)."""
    return sum(3 + len(words(text_of(m.get("content")))) for m in messages)


def chunk_frame(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
    """One `chat.completion.chunk` SSE frame of the first (only) choice."""
    choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return sse([chunk_body([choice])])[0]


def chunk_body(choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "fake",
        "system_fingerprint": "fp_fake",
        "choices": choices,
        "usage": usage,
    }


class Answer:
    """What the fake says to one request: text or tool calls, why it stopped, what it cost."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.messages: list[dict[str, Any]] = body["messages"]
        last_user = [m for m in self.messages if m.get("role") == "user"][-1:]
        said = text_of(last_user[0].get("content")) if last_user else ""
        self.magic = next((w for w in MAGIC if w in said), None)
        self.said = said
        self.text, self.finish = "", "stop"
        self.calls: list[dict[str, Any]] = []
        self.fragments: list[list[str]] = []
        self._decide()

    def _decide(self) -> None:
        body, last = self.body, self.messages[-1]
        # custom tools (`type: custom`) are accepted and never called: this fake calls functions
        tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
        if self.magic == BLOCK:
            self.finish = "content_filter"
        elif tools and body.get("tool_choice") != "none" and last.get("role") != "tool":
            self._call_tools(tools)
        elif last.get("role") == "tool":
            self.text = f"The tool {last.get('tool_call_id')} said: {text_of(last['content'])}"
        elif (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
            self.text = json.dumps(json_answer(body["response_format"]))
        elif self.magic == SLOW:
            self.text = "tick"
        else:
            self.text = f"Hello! You said: {self.said}"
        self._cut()

    def _call_tools(self, tools: list[dict[str, Any]]) -> None:
        chosen = tools[:1] if self.body.get("parallel_tool_calls") is False else tools[:2]
        for i, tool in enumerate(chosen):
            name = tool["function"]["name"]
            args = json.dumps({"city": "Paris", "n": i})
            self.calls.append(
                {
                    "id": f"call_{i}{name}",
                    "type": "function",
                    "function": {"name": name, "arguments": args},
                }
            )
            self.fragments.append([args[j : j + 7] for j in range(0, len(args), 7)])
        self.finish = "tool_calls"

    def _cut(self) -> None:
        """Apply `stop` and the max-tokens cap to the text."""
        stops = self.body.get("stop") or []
        for stop in [stops] if isinstance(stops, str) else stops:
            if stop in self.text:
                self.text = self.text[: self.text.index(stop)]
        cap = self.body.get("max_completion_tokens") or self.body.get("max_tokens")
        if cap is not None and len(words(self.text)) > cap:
            self.text, self.finish = "".join(words(self.text)[:cap]), "length"

    @property
    def usage(self) -> dict[str, int]:
        done = len(words(self.text)) + sum(len(f) for f in self.fragments)
        prompt = prompt_tokens(self.messages)
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    def entry(self, token: str) -> dict[str, Any]:
        """The logprobs.content entry of one token, with `top_logprobs` alternatives."""
        top = int(self.body.get("top_logprobs") or 0)
        alternatives = [
            {"token": f"{token}{k}", "logprob": -1.0 - k, "bytes": list(f"{token}{k}".encode())}
            for k in range(top)
        ]
        return {
            "token": token,
            "logprob": -0.25,
            "bytes": list(token.encode()),
            "top_logprobs": alternatives,
        }

    def logprobs(self, token: str) -> dict[str, Any] | None:
        if not self.body.get("logprobs"):
            return None
        return {"content": [self.entry(token)], "refusal": None}

    def frames(self, include_usage: bool) -> list[bytes]:
        """The SSE frames of the streamed answer, ending with `data: [DONE]`."""
        out = [chunk_frame({"role": "assistant", "content": "", "refusal": None})]
        out += [chunk_frame({"content": t}, logprobs=self.logprobs(t)) for t in words(self.text)]
        for i, (call, pieces) in enumerate(zip(self.calls, self.fragments, strict=True)):
            head = {**call, "index": i, "function": {**call["function"], "arguments": ""}}
            out.append(chunk_frame({"tool_calls": [head]}))
            out += [
                chunk_frame({"tool_calls": [{"index": i, "function": {"arguments": p}}]})
                for p in pieces
            ]
        out.append(chunk_frame({}, finish=self.finish))
        if include_usage:
            out += sse([chunk_body([], self.usage)])
        return [*out, b"data: [DONE]\n\n"]

    def completion(self) -> dict[str, Any]:
        """The non-streaming `chat.completion` body."""
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.text or None,
            "refusal": None,
        }
        if self.calls:
            message["tool_calls"] = self.calls
        logprobs = None
        if self.body.get("logprobs"):
            logprobs = {"content": [self.entry(t) for t in words(self.text)], "refusal": None}
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": CREATED,
            "model": self.body["model"],
            "system_fingerprint": "fp_fake",
            "choices": [
                {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": self.finish}
            ],
            "usage": self.usage,
        }


def json_answer(response_format: dict[str, Any]) -> dict[str, Any]:
    """JSON that fits a json_schema's properties (by type), or a fixed object."""
    schema = (response_format.get("json_schema") or {}).get("schema") or {}
    samples = {
        "string": "Paris",
        "integer": 42,
        "number": 1.5,
        "boolean": True,
        "array": [],
        "object": {},
    }
    props = schema.get("properties") or {}
    if not props:
        return {"answer": "Paris"}
    return {name: samples.get(spec.get("type")) for name, spec in props.items()}


def start_openai_fake(
    models: dict[str, int | None] | None = None, api_key: str | None = None, vllm: bool = False
) -> OpenAIFake:
    """A started fake; its OpenAI base URL is `fake.url + "/v1"`. Stop it with `.stop()`."""
    fake = OpenAIFake(models, api_key, vllm)
    fake.start()
    return fake
