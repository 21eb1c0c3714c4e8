"""What crosses the queue and the token stream: ChatJob in, Chunk / Done / ErrorInfo out.

Free of Flask, Celery and Redis so that every layer (api, tasks, workers) can share it.
Everything here round-trips through plain JSON-able dicts.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")


def known_fields(cls: type[T], data: dict[str, Any]) -> dict[str, Any]:
    """`data` without the keys `cls` (a dataclass) does not have: a field added by a newer
    API or worker is dropped by an older reader instead of failing its decode."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class Sampling:
    """OpenAI sampling fields a backend honours; None means the backend's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sampling:
        """Decode; unknown keys are ignored (see `known_fields`)."""
        return cls(**{**known_fields(cls, data), "stop": tuple(data.get("stop") or ())})


@dataclass(frozen=True)
class ChatJob:
    """One chat completion as a worker sees it.

    `upstream_model` is the name the backend knows; `model` the public id the client
    asked for. `base_url` and `api_key_env` are what the registry says of the backend (the
    key itself never travels); a worker reaches a backend through its own configuration
    and honours them only where they match it (workers/providers.py). `extra` carries
    pass-through request fields (tools, response_format, logprobs, user, ...) for backends
    that understand them; `headers` the client request headers the operator chose to
    forward (llm-d routing hints).
    """

    id: str
    model: str
    backend: str
    kind: str
    upstream_model: str
    messages: list[dict[str, Any]]
    sampling: Sampling = field(default_factory=Sampling)
    extra: dict[str, Any] = field(default_factory=dict)
    base_url: str | None = None
    api_key_env: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    deadline: float | None = None
    request_id: str | None = None  # the API request's id, for the worker's log lines

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sampling"]["stop"] = list(self.sampling.stop)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatJob:
        """Decode; unknown keys are ignored, a missing required one raises TypeError."""
        data = known_fields(cls, data)
        data["sampling"] = Sampling.from_dict(data.get("sampling") or {})
        return cls(**data)

    def expired(self, now: float | None = None) -> bool:
        """True once the job's absolute deadline has passed."""
        return self.deadline is not None and (now or time.time()) >= self.deadline


@dataclass(frozen=True)
class Chunk:
    """A piece of the answer, in order: text, and/or tool-call fragments in OpenAI's
    streaming shape (`[{"index", "id"?, "type"?, "function": {"name"?, "arguments"}}]`),
    and the OpenAI `logprobs.content` entries of the tokens in `delta`."""

    delta: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: list[dict[str, Any]] | None = None

    def __bool__(self) -> bool:
        return bool(self.delta or self.tool_calls or self.logprobs)


@dataclass(frozen=True)
class Usage:
    """Token counts as OpenAI reports them."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


#: Characters per token for an estimate without a tokenizer (English text, BPE vocabularies).
CHARS_PER_TOKEN = 4
#: Tokens a chat template adds around each message (role markers, separators).
TOKENS_PER_MESSAGE = 4


def prompt_token_estimate(messages: list[dict[str, Any]]) -> int:
    """The prompt's tokens, estimated from its text without a tokenizer: its characters /
    CHARS_PER_TOKEN plus TOKENS_PER_MESSAGE a message (text parts only; an image's cost is
    the backend's to say)."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(p.get("text") or "")) for p in content if isinstance(p, dict))
    return -(-chars // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)


def partial_usage(job: ChatJob, streamed: int) -> Usage:
    """What an attempt that ended without the backend's count (it failed or was cancelled)
    had used, after `streamed` token chunks: nothing before the first (no answer began; an
    upstream that refused bills nothing), else the prompt, estimated, and one completion
    token a chunk."""
    if streamed == 0:
        return Usage(0, 0)
    return Usage(prompt_token_estimate(job.messages), streamed)


@dataclass(frozen=True)
class Done:
    """The end of a successful generation: why it stopped and what it cost."""

    finish_reason: str
    usage: Usage


@dataclass(frozen=True)
class ErrorInfo:
    """An error in OpenAI's shape plus the HTTP status the client should see, and for 429 /
    503 how many seconds to wait (sent as the Retry-After header, not in the body)."""

    message: str
    type: str = "server_error"
    code: str | None = None
    param: str | None = None
    status: int = 500
    retry_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorInfo:
        """Decode; unknown keys are ignored (see `known_fields`)."""
        return cls(**known_fields(cls, data))

    def body(self) -> dict[str, Any]:
        """The OpenAI error body: {"error": {message, type, param, code}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
