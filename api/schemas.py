"""OpenAI wire shapes: the chat completion request (validated with pydantic) and the
response bodies (built as plain dicts, since they are on the hot path).

The request is validated in one linear pass, all in pydantic's core (its typed parts are in
api/request_parts.py), under hard caps on how many messages, parts and tools there may be.
A field outside OpenAI's request schema and every backend's pass-through list
(workers/providers.json) is refused, as OpenAI refuses it.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError
from pydantic_core import PydanticCustomError

from api.request_parts import (
    MAX_TOOLS,
    FunctionDefinition,
    FunctionToolCall,
    Message,
    NamedFunction,
    ResponseFormat,
    Shape,
    StreamOptions,
    Tool,
    ToolChoice,
)
from workers.errors import ContextLengthExceeded, InvalidRequestError
from workers.protocol import Sampling, Usage
from workers.providers import known_pass_through

MAX_MESSAGES = 2048  # messages in one request
MIN_TEMPERATURE = 1e-3  # above 0, the smallest temperature that samples without overflow
#: No tokenizer packs more text than this into one token on average: a prompt with more
#: characters of text than this many per token of context cannot fit (nor a body with more
#: bytes; api/http.py refuses it before parsing).
BYTES_PER_TOKEN = 8

#: Every top-level field of OpenAI's chat completion request (tests/api/test_field_tables.py
#: checks the installed openai SDK sends none outside it).
SPEC_FIELDS = frozenset({
    "messages", "model", "audio", "frequency_penalty", "function_call", "functions",
    "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities",
    "moderation", "n", "parallel_tool_calls", "prediction", "presence_penalty",
    "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning_effort",
    "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
    "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user",
    "verbosity", "web_search_options"})  # fmt: skip

#: The fields the router reads itself; every other accepted field is passed on to the
#: backend when its pass-through list (workers/providers.json) names it, else dropped.
ROUTER_FIELDS = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "n", "stop", "seed", "presence_penalty", "frequency_penalty",
})  # fmt: skip


def _temperature(value: float) -> float:
    # 1e-300 would pass 0..2 and overflow every logit it divides
    if 0 < value < MIN_TEMPERATURE:
        raise PydanticCustomError(
            "temperature_range",
            "temperature must be 0 (greedy) or from {low} to 2",
            {"low": MIN_TEMPERATURE},
        )
    return value


# -- the request ----------------------------------------------------------------------------
class ChatCompletionRequest(Shape):
    """POST /v1/chat/completions. Fields the router does not read pass through to backends
    that take them (`extra()`, filtered per backend by workers/providers.json)."""

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2), AfterValidator(_temperature)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    user: str | None = None
    # passed through, typed because the backends' translators rely on their shape
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    functions: Annotated[list[FunctionDefinition], Field(max_length=MAX_TOOLS)] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None

    def sampling(self, cap: int | None = None, default: int | None = None) -> Sampling:
        """The sampling fields; max_tokens cut to `cap` (a fallback model's own), `default`
        when the request sets none."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        asked = self.max_completion_tokens or self.max_tokens
        return Sampling(
            max_tokens=default if asked is None else min(asked, cap or asked),
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(s for s in stop if s),
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        )

    def check_max_tokens(self, cap: int) -> None:
        """400 naming the field when the request asks for more completion tokens than the
        model's cap, as OpenAI answers."""
        asked = self.max_completion_tokens or self.max_tokens
        if asked is not None and asked > cap:
            field = "max_completion_tokens" if self.max_completion_tokens else "max_tokens"
            raise InvalidRequestError(
                f"{field} is too large: {asked}. The model `{self.model}` supports at most "
                f"{cap} completion tokens.",
                param=field,
            )

    def extra(self) -> dict[str, Any]:
        """The fields the router does not read, as the client sent them (tools, user, ...)."""
        return self.model_dump(by_alias=True, exclude_unset=True, exclude=set(ROUTER_FIELDS))

    def messages_as_dicts(self) -> list[dict[str, Any]]:
        return [m.model_dump(by_alias=True, exclude_none=True) for m in self.messages]

    def text_size(self) -> int:
        """Characters of text in the messages (content, refusals, tool-call arguments);
        images, audio and files are left out: backends count those in their own units."""
        size = 0
        for m in self.messages:
            parts = [m.content] if isinstance(m.content, str) else m.content or ()
            size += sum(len(_text_of(p)) for p in parts)
            for call in getattr(m, "tool_calls", None) or ():
                is_function = isinstance(call, FunctionToolCall)
                size += len(call.function.arguments if is_function else call.custom.input)
        return size

    def check_fits(self, window: int) -> None:
        """ContextLengthExceeded (400) when the messages hold more text than `window` tokens
        (the largest context the request can reach) could: BYTES_PER_TOKEN a token."""
        size = self.text_size()
        if size > window * BYTES_PER_TOKEN:
            raise ContextLengthExceeded(
                f"The messages hold {size} characters of text, more than fits in the largest "
                f"context window this request can reach ({window} tokens).",
                param="messages",
            )


def _text_of(part: Any) -> str:
    """The text of a message content (a string) or of one of its parts ("" for media)."""
    text = part if isinstance(part, str) else getattr(part, "text", getattr(part, "refusal", ""))
    return text if isinstance(text, str) else ""


# -- parsing --------------------------------------------------------------------------------
@cache
def accepted_fields() -> frozenset[str]:
    """What a request may hold: OpenAI's fields and every backend's pass-through fields."""
    return SPEC_FIELDS | known_pass_through()


def parse_chat_request(body: Any) -> ChatCompletionRequest:
    """Validate a decoded JSON body; raise InvalidRequestError with `param` on the first fault."""
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    unknown = [name for name in body if name not in accepted_fields()]
    if unknown:
        raise InvalidRequestError(
            f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0]
        )
    if body.get("n") not in (None, 1):
        raise InvalidRequestError(
            "Only n=1 is supported; send several requests for several choices.", param="n"
        )
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > MAX_MESSAGES:
        raise InvalidRequestError(
            f"Too many messages: {len(messages)}; at most {MAX_MESSAGES} are accepted.",
            param="messages",
        )
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc, body) from None


def _param(error: Any, body: Any) -> str:
    """pydantic's location of `error` -> OpenAI's param notation (messages.[0].role), found
    by walking the body. pydantic adds union branch names, which are no keys of the body,
    and the tag of a tagged union: the object's `role` or `type`, first thing after the
    object and never last (a function call's tag "function" is also one of its keys)."""
    loc, parts, node, tagged = error["loc"], [], body, False
    last = len(loc) - 1
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and 0 <= item < len(node) else None
            tagged = False
        elif isinstance(node, dict) and not tagged and i < last and _is_tag(item, node):
            tagged = True
        elif isinstance(node, dict) and item in node:
            parts.append(item)
            node, tagged = node[item], False
        elif i == last and error["type"] == "missing":
            parts.append(item)
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        parts.append(str(error["ctx"]["discriminator"]).strip("'"))
    return ".".join(parts)


def _is_tag(item: str, node: dict[str, Any]) -> bool:
    return item == node.get("role") or item == node.get("type")


def _invalid(exc: ValidationError, body: Any) -> InvalidRequestError:
    """The first faulty field at its deepest fault (a union's matching branch), with every
    reason pydantic gave there; "not a string" from a union's other branch is left out
    when a branch of the right type says more."""
    found = [(_param(e, body), e["type"], e["msg"]) for e in exc.errors()]
    first = found[0][0]
    param = max((p for p, _, _ in found if p == first or p.startswith(first + ".")), key=len)
    here = [(kind, msg) for p, kind, msg in found if p == param]
    reasons = [msg for kind, msg in here if not kind.endswith("_type")] or [m for _, m in here]
    where = f" at '{param}'" if param else ""
    message = f"Invalid request{where}: {' or '.join(dict.fromkeys(reasons))}."
    return InvalidRequestError(message, param=param or None)


def completion_body(
    completion_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str | None,
    usage: Usage | None,
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A non-streaming `chat.completion`; with tool calls and no text, `content` is null."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": {"content": logprobs, "refusal": None} if logprobs else None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage.to_dict() if usage else None,
    }


def chunk_body(
    completion_id: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    with_usage_field: bool = False,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One `chat.completion.chunk`; with include_usage every chunk carries `usage: null`."""
    lp = {"content": logprobs, "refusal": None} if logprobs else None
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish_reason}],
    }
    if with_usage_field:
        body["usage"] = None
    return body


def usage_chunk_body(completion_id: str, created: int, model: str, usage: Usage) -> dict[str, Any]:
    """The last chunk when stream_options.include_usage is set: no choices, the usage."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [],
        "usage": usage.to_dict(),
    }


def model_body(model_id: str, created: int, owned_by: str, **extra: Any) -> dict[str, Any]:
    """An OpenAI `model` object; extra fields (availability, context) follow the standard ones."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by, **extra}
