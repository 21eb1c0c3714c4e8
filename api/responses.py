"""The response bodies of the HTTP API as the OpenAPI document (api/openapi.py) describes
them. The API builds its bodies as plain dicts on the hot path (api/schemas.py,
api/blueprints/jobs.py); these shapes only document them, and tests/api/test_openapi.py and
the fuzzer (tests/e2e/test_openapi_fuzz.py) hold the built bodies to them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tasks.keys import JobStatus


class Shape(BaseModel):
    """A documented response object; fields beyond these may be added, so none is refused."""

    model_config = ConfigDict(extra="allow")


class ErrorObject(Shape):
    message: str
    type: str
    param: str | None
    code: str | None


class Error(Shape):
    """Every error the API answers, whatever its status."""

    error: ErrorObject


class Usage(Shape):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Logprobs(Shape):
    content: list[dict[str, Any]] | None
    refusal: list[dict[str, Any]] | None


class CompletionMessage(Shape):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None
    tool_calls: list[dict[str, Any]] | None = None


class Choice(Shape):
    index: int
    message: CompletionMessage
    logprobs: Logprobs | None
    finish_reason: str | None


class ChatCompletion(Shape):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[Choice]
    usage: Usage | None


class ChunkChoice(Shape):
    index: int
    delta: dict[str, Any]
    logprobs: Logprobs | None
    finish_reason: str | None


class ChatCompletionChunk(Shape):
    """One `data:` of a streamed completion; the stream ends with `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[ChunkChoice]
    usage: Usage | None = None


class Model(Shape):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    available: bool
    context_window: int
    max_tokens: int
    aliases: list[str]


class ModelList(Shape):
    object: Literal["list"]
    data: list[Model]


class Job(Shape):
    id: str
    object: Literal["job"]
    status: JobStatus
    model: str
    backend: str
    created_at: int
    started_at: int | None
    finished_at: int | None
    attempt: int
    cancel_requested: bool
    text: str
    result: ChatCompletion | None
    error: ErrorObject | None


class AdminList(Shape):
    object: Literal["list"]
    data: list[dict[str, Any]]


class Health(Shape):
    status: Literal["ok"]


class Readiness(Shape):
    status: Literal["ok", "unavailable"]
    redis: str
    database: str
    workers: dict[str, int] | None = None


RESPONSE_SHAPES: tuple[type[BaseModel], ...] = (
    Error,
    ChatCompletion,
    ChatCompletionChunk,
    Model,
    ModelList,
    Job,
    AdminList,
    Health,
    Readiness,
)
