"""OpenAI wire shapes: the chat completion request (validated with pydantic) and the
response bodies (built as plain dicts, since they are on the hot path).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from workers.errors import InvalidRequestError
from workers.protocol import Sampling, Usage

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Role
    content: str | list[ContentPart] | None = None

    @model_validator(mode="after")
    def _content_required(self) -> Message:
        # only an assistant turn (carrying tool_calls) may come without content
        if self.content is None and self.role != "assistant":
            raise PydanticCustomError(
                "content_required", "content is required for role '{role}'", {"role": self.role}
            )
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. Unknown fields are kept and passed to providers."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[Message], Field(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    user: str | None = None

    def sampling(self) -> Sampling:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return Sampling(
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(s for s in stop if s),
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        )

    def extra(self) -> dict[str, Any]:
        """Fields we do not interpret, passed through to backends that do (tools, user, ...)."""
        extra = dict(self.model_extra or {})
        if self.user is not None:
            extra["user"] = self.user
        return extra

    def messages_as_dicts(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc: tuple[Any, ...]) -> str:
    """pydantic location -> OpenAI's param notation, e.g. messages.[0].role."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not (item in _TYPE_TAGS or "[" in item or item[:1].isupper() or "-" in item):
            parts.append(str(item))  # field names; pydantic's union-branch tags are skipped
    return ".".join(parts)


def parse_chat_request(body: Any) -> ChatCompletionRequest:
    """Validate a decoded JSON body; raise InvalidRequestError with `param` on the first fault."""
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    if body.get("n") not in (None, 1):
        raise InvalidRequestError(
            "Only n=1 is supported; send several requests for several choices.", param="n"
        )
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> InvalidRequestError:
    """The first faulty field, with every reason pydantic gave for it (union branches)."""
    errors = exc.errors()
    param = _param(tuple(errors[0]["loc"]))
    if errors[0]["type"] == "content_required":
        param += ".content"
    reasons = [e["msg"] for e in errors if _param(tuple(e["loc"])) == _param(errors[0]["loc"])]
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
