"""A fake Gemini API (Generative Language API v1beta) on a FakeServer.

    POST /v1beta/models/{model}:streamGenerateContent?alt=sse  -> `data: {response}` frames
    POST /v1beta/models/{model}:generateContent                -> one GenerateContentResponse

Like the real API it wants the `x-goog-api-key` header (missing: 403; wrong: 400
API_KEY_INVALID), knows only `gemini-*` models (else 404), checks the turns it is sent
(non-empty parts, a function response right after the call it answers, a thought
signature on a replayed step's first functionCall, as Gemini 3 does) and answers from
the request: a functionCall when tools are given and the last turn is user text; text
about the function response after one; JSON under responseMimeType application/json; a
SAFETY stop for "forbidden"; a blocked prompt for "blockprompt"; a thought part for
"think"; MAX_TOKENS when maxOutputTokens is short. Errors use Google's body,
`{"error": {"code", "message", "status", "details"}}`. A "token" is a word here, so
usage is predictable: `count_tokens(text)`.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.server import FakeServer, Reply, Request

API_KEY = "AIzaFAKE-gemini-0123456789abcdefghij"
PREFIX = "/v1beta/models/"
SIGNATURE = base64.b64encode(b"fake-thought-signature").decode()
BLOCKED_RATING = {
    "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
    "probability": "HIGH",
    "blocked": True,
}

#: HTTP status -> google.rpc status name, as the real API pairs them.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def start_gemini_fake(key: str = API_KEY) -> FakeServer:
    """A started fake; point GEMINI_BASE_URL at `.url` and send `key`."""
    return FakeServer({("POST", PREFIX): lambda req: handle(req, key)}).start()


# -- wire helpers (also for scripting faults) ------------------------------------------


def google_error(
    code: int,
    message: str,
    *,
    reason: str | None = None,
    retry_delay: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """Google's error body; `reason` adds an ErrorInfo, `retry_delay` ("2s") a RetryInfo."""
    details: list[dict[str, Any]] = []
    if reason:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        )
    if retry_delay:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
        )
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": STATUS_NAMES.get(code, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return Reply(code, {"error": error}, headers=dict(headers or {}))


def frame(payload: dict[str, Any]) -> bytes:
    """One SSE event as the real API writes it (CRLF-delimited)."""
    return b"data: " + json.dumps(payload).encode() + b"\r\n\r\n"


def sse_reply(payloads: list[dict[str, Any]], **kwargs: Any) -> Reply:
    """A 200 SSE stream of these GenerateContentResponse payloads (Reply kwargs pass on)."""
    return Reply(chunks=[frame(p) for p in payloads], content_type="text/event-stream", **kwargs)


def text_response(
    text: str, finish: str | None = None, usage: dict[str, int] | None = None
) -> dict[str, Any]:
    """A GenerateContentResponse carrying `text` (and a finishReason / usage if given)."""
    candidate: dict[str, Any] = {
        "content": {"role": "model", "parts": [{"text": text}]},
        "index": 0,
    }
    if finish:
        candidate["finishReason"] = finish
    payload: dict[str, Any] = {
        "candidates": [candidate],
        "modelVersion": "gemini-fake-001",
        "responseId": "fake-response",
    }
    if usage:
        payload["usageMetadata"] = usage
    return payload


@dataclass
class StreamProbe:
    """How far a slow stream got before the client went away."""

    total: int
    sent: int = 0
    completed: bool = False
    stopped: threading.Event = field(default_factory=threading.Event)


def slow_stream(server: FakeServer, frames: int = 40, interval: float = 0.05) -> StreamProbe:
    """Script the next answer as `frames` text frames `interval` s apart; watch it.

    The generator lives only in the server (the probe holds no reference), so when the
    client drops the connection the failed write ends it and `stopped` is set at once."""
    probe = StreamProbe(frames)

    def produce() -> Iterator[bytes]:
        try:
            for i in range(frames):
                yield frame(text_response(f"word{i} "))
                probe.sent += 1
                time.sleep(interval)
            yield frame(
                text_response("", "STOP", {"promptTokenCount": 1, "candidatesTokenCount": frames})
            )
            probe.completed = True
        finally:
            probe.stopped.set()

    server.fail_next(Reply(chunks=produce(), content_type="text/event-stream"))
    return probe


# -- the API ---------------------------------------------------------------------------


def count_tokens(text: str) -> int:
    return len(text.split())


def handle(req: Request, key: str) -> Reply:
    """Route one call the way the real API answers it."""
    model, _, method = req.path[len(PREFIX) :].partition(":")
    given = req.headers.get("x-goog-api-key")
    if not given:
        return google_error(
            403,
            "Method doesn't allow unregistered callers (callers without "
            "established identity). Please use API Key or other form of API "
            "consumer identity to call this API.",
        )
    if given != key:
        return google_error(
            400, "API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID"
        )
    if method not in ("streamGenerateContent", "generateContent"):
        return google_error(404, f"Method {method!r} not found.")
    if not model.startswith("gemini-"):
        return google_error(
            404,
            f"models/{model} is not found for API version v1beta, or is "
            "not supported for generateContent. Call ListModels to see the "
            "list of available models and their supported methods.",
        )
    body = camel(req.body) if isinstance(req.body, dict) else {}
    problem = check_request(body)
    if problem:
        return google_error(400, problem)
    payloads = answer(body)
    if method == "generateContent":
        return Reply(200, merge(payloads))
    if "alt=sse" not in req.query:
        return Reply(200, payloads)  # without alt=sse the API streams one JSON array
    return sse_reply(payloads)


#: Values under these keys are the caller's data (schemas, arguments): never renamed.
OPAQUE_FIELDS = {
    "args",
    "response",
    "parameters",
    "parametersJsonSchema",
    "responseSchema",
    "responseJsonSchema",
}


def camel(body: Any) -> Any:
    """`body` with every field name in lowerCamelCase: proto JSON parsers accept the
    declared snake_case names too (the SDK sends some), so the fake reads both."""
    if isinstance(body, list):
        return [camel(item) for item in body]
    if not isinstance(body, dict):
        return body
    renamed = {}
    for name, value in body.items():
        head, *rest = name.split("_")
        key = head + "".join(word[:1].upper() + word[1:] for word in rest)
        renamed[key] = value if key in OPAQUE_FIELDS else camel(value)
    return renamed


def check_request(body: dict[str, Any]) -> str | None:
    """What the real API would refuse with 400, or None."""
    contents = body.get("contents") or []
    if not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    calls: set[str] = set()
    for i, content in enumerate(contents):
        parts = content.get("parts") or []
        if content.get("role") not in ("user", "model") or not parts:
            return f"* GenerateContentRequest.contents[{i}]: role or parts missing"
        named = [p["functionCall"]["name"] for p in parts if "functionCall" in p]
        first = next((p for p in parts if "functionCall" in p), None)
        if first is not None and not first.get("thoughtSignature"):
            return (
                f"Function call `{named[0]}` in the {i}. content block is missing a "
                "`thought_signature`."
            )
        for part in parts:
            answered = (part.get("functionResponse") or {}).get("name")
            if answered is not None and answered not in calls:
                return (
                    "Please ensure that function response turn comes immediately after a "
                    "function call turn."
                )
            if "inlineData" in part and not _is_base64(part["inlineData"].get("data")):
                return (
                    f"Invalid value at 'contents[{i}].parts.inline_data.data' "
                    "(TYPE_BYTES), Base64 decoding failed"
                )
        calls = set(named)
    return None


def _is_base64(data: Any) -> bool:
    """Proto JSON bytes: standard or URL-safe base64."""
    try:
        base64.b64decode(str(data).replace("-", "+").replace("_", "/"), validate=True)
    except ValueError:
        return False
    return True


def answer(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The streamed GenerateContentResponse payloads this request gets."""
    prompt = prompt_text(body)
    prompt_tokens = count_tokens(prompt)
    lowered = prompt.lower()
    if "blockprompt" in lowered:
        return [
            {
                "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [BLOCKED_RATING]},
                "usageMetadata": {
                    "promptTokenCount": prompt_tokens,
                    "totalTokenCount": prompt_tokens,
                },
                "modelVersion": "gemini-fake-001",
            }
        ]
    if "forbidden" in lowered:
        stop = {
            "candidates": [
                {"finishReason": "SAFETY", "index": 0, "safetyRatings": [BLOCKED_RATING]}
            ],
            "usageMetadata": _usage(prompt_tokens, 2),
        }
        return [text_response("Let me"), stop]
    call = _function_calls(body)
    if call is not None:
        return [
            {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": call},
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                "usageMetadata": _usage(prompt_tokens, 3 * len(call)),
            }
        ]
    return _text_answer(body, _reply_text(body), prompt_tokens, "think" in lowered)


def merge(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streaming answer: every streamed part in one candidate."""
    merged = dict(payloads[-1])
    parts = [
        p
        for pl in payloads
        for c in pl.get("candidates", [])
        for p in (c.get("content") or {}).get("parts", [])
    ]
    if merged.get("candidates"):
        merged["candidates"] = [
            {**merged["candidates"][0], "content": {"role": "model", "parts": parts}}
        ]
    return merged


def prompt_text(body: dict[str, Any]) -> str:
    """Every text the request carries (system instruction first)."""
    contents = [body.get("systemInstruction") or {}, *(body.get("contents") or [])]
    return " ".join(p["text"] for c in contents for p in c.get("parts") or [] if "text" in p)


def _usage(prompt: int, candidates: int, thoughts: int = 0) -> dict[str, int]:
    usage = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def _function_calls(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """functionCall parts when tools are on and the user just spoke, else None."""
    declared = [d for t in body.get("tools") or [] for d in t.get("functionDeclarations") or []]
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    last = (body.get("contents") or [{}])[-1]
    user_text = last.get("role") == "user" and any("text" in p for p in last.get("parts", []))
    if not declared or not user_text or config.get("mode") == "NONE":
        return None
    allowed = config.get("allowedFunctionNames")
    usable = [d for d in declared if not allowed or d["name"] in allowed]
    wanted = usable[:2] if "parallel" in prompt_text(body).lower() else usable[:1]
    calls = []
    for i, decl in enumerate(wanted):
        schema = decl.get("parametersJsonSchema") or decl.get("parameters") or {}
        part: dict[str, Any] = {"functionCall": {"name": decl["name"], "args": sample(schema)}}
        if i == 0:
            part["thoughtSignature"] = SIGNATURE  # only a step's first call carries one
        calls.append(part)
    return calls


def _reply_text(body: dict[str, Any]) -> str:
    """JSON under a JSON mime type; a word about a function response; else an echo."""
    config = body.get("generationConfig") or {}
    if config.get("responseMimeType") == "application/json":
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        return json.dumps(sample(schema) if schema else {"answer": "Paris"})
    last = body["contents"][-1]
    answered = [p["functionResponse"] for p in last.get("parts", []) if "functionResponse" in p]
    if answered:
        return " ".join(
            f"The function {r['name']} returned {json.dumps(r.get('response'), sort_keys=True)}."
            for r in answered
        )
    said = " ".join(p["text"] for p in last.get("parts", []) if "text" in p)
    return f"Hello from Gemini! You said: {said}"


def _text_answer(
    body: dict[str, Any], text: str, prompt_tokens: int, thinking: bool
) -> list[dict[str, Any]]:
    """`text` streamed as up to three frames, cut by maxOutputTokens or a stop sequence."""
    config = body.get("generationConfig") or {}
    finish = "STOP"
    for stop in config.get("stopSequences") or []:
        text = text.split(stop)[0] if stop in text else text
    words = text.split(" ")
    limit = config.get("maxOutputTokens")
    if limit is not None and len(words) > limit:
        words, finish = words[:limit], "MAX_TOKENS"
    pieces = _split(words)
    thoughts = 5 if thinking else 0
    payloads = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        payload = text_response(piece, finish if last else None)
        if i == 0 and thinking:
            parts = payload["candidates"][0]["content"]["parts"]
            parts.insert(0, {"text": "Let me think about this.", "thought": True})
        if config.get("responseLogprobs"):
            payload["candidates"][0]["logprobsResult"] = _logprobs(piece, config.get("logprobs"))
        spoken = count_tokens(" ".join(words))
        payload["usageMetadata"] = _usage(prompt_tokens, spoken if last else 0, thoughts)
        payloads.append(payload)
    return payloads


def _split(words: list[str]) -> list[str]:
    """Three roughly equal pieces that concatenate back to the text."""
    size = max(1, -(-len(words) // 3))
    groups = [words[i : i + size] for i in range(0, len(words), size)] or [[""]]
    return [" ".join(g) + ("" if i == len(groups) - 1 else " ") for i, g in enumerate(groups)]


def _logprobs(piece: str, top: int | None) -> dict[str, Any]:
    tokens = piece.split(" ")
    chosen = [
        {"token": t, "tokenId": i, "logProbability": -0.25 * (i + 1)} for i, t in enumerate(tokens)
    ]
    tops = [
        {
            "candidates": [
                c,
                *(
                    {"token": f"alt{k}", "tokenId": 900 + k, "logProbability": -3.0 - k}
                    for k in range((top or 1) - 1)
                ),
            ]
        }
        for c in chosen
    ]
    return {"chosenCandidates": chosen, "topCandidates": tops}


def sample(schema: dict[str, Any] | None) -> Any:
    """A value fitting a JSON schema (the first enum value, "Paris" for strings, ...)."""
    schema = schema or {}
    kind = schema.get("type")
    kind = next((k for k in kind if k != "null"), None) if isinstance(kind, list) else kind
    kind = str(kind or "string").lower()
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "object":
        return {name: sample(sub) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [sample(schema.get("items"))]
    return {"integer": 3, "number": 21.5, "boolean": True}.get(kind, "Paris")
