"""The OpenAI-compatible backend: OpenAI, OpenRouter, xAI (grok), Venice and any operator-added
backend of kind `openai-compatible`, spoken to over OpenAI's documented wire format.

    job -> build_request() -> POST /chat/completions (stream, include_usage)
        -> relay(): text / tool-call fragments / logprobs as Chunk, then one Done

The call is made by `workers.openai_http` (pooled urllib3, orjson) rather than the
`openai` SDK, whose per-request machinery cost more CPU than all the rest of a provider
worker. Every upstream failure becomes a RouterError by one table, `FAILURES`, read the
way every provider's is (workers/failures.py); the retry loop of `workers.upstream` may
retry a request only until its first chunk has been yielded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from workers.clients import ClientBackend
from workers.errors import InvalidRequestError, UpstreamError
from workers.failures import (
    DROPPED,
    FAILED,
    TIMEOUT,
    UNREACHED,
    Answer,
    Answered,
    Failure,
    Table,
    describe,
    ended_early,
    translate,
)
from workers.openai_http import (
    ChatClient,
    Timeouts,
    UpstreamBroken,
    UpstreamFailure,
    UpstreamStatus,
    UpstreamStreamError,
    UpstreamTimeout,
)
from workers.protocol import ChatJob, Chunk, Done, Usage
from workers.providers import Endpoint, allowed_extra, endpoint, provider_table
from workers.upstream import retry_after_seconds, retrying

log = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"  # as the SDK, when no base URL is set

#: Request fields the backend sets itself from the job; a copy left in `job.extra` is ignored.
OWN_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
    }
)

#: Fields whose answer our token stream cannot carry: field -> (is it asking for it?, why).
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: v not in (None, 1), "only n=1 is supported"),
    "functions": (lambda v: bool(v), "the legacy `functions` API is not relayed; use `tools`"),
    "function_call": (
        lambda v: v is not None,
        "legacy `function_call` is not relayed; use `tool_choice`",
    ),
    "audio": (lambda v: v is not None, "audio output is not relayed"),
    "modalities": (lambda v: "audio" in (v or ()), "audio output is not relayed"),
}

#: Upstream finish reasons -> OpenAI's; compatible servers use a few of their own.
FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "function_call": "tool_calls",
    "eos": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}

#: An in-stream error payload without a numeric status: its `type` or `code` -> HTTP status.
STREAM_ERROR_STATUS = {
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "server_error": 502,
    "overloaded_error": 503,
    "timeout": 504,
}


# -- requests --------------------------------------------------------------------------
def reject_unsupported(job: ChatJob) -> None:
    """InvalidRequestError (naming field and backend) for a request we cannot relay."""
    for name, (asks, why) in UNSUPPORTED.items():
        if name in job.extra and asks(job.extra[name]):
            raise InvalidRequestError(f"`{job.backend}`: {why} (`{name}`).", param=name)


def max_tokens_field(backend: str) -> str:
    """The request field carrying the completion cap for `backend` (providers.json)."""
    return str(provider_table().get(backend, {}).get("max_tokens_field") or "max_tokens")


def build_request(job: ChatJob, cap_field: str = "max_tokens") -> dict[str, Any]:
    """The JSON body for `job`: always streaming with usage; the client's other fields pass
    through as they came (tools, response_format, logprobs, a provider's own options), but
    only those on the backend's pass-through list (providers.json): nothing else reaches
    the upstream, even from a job written straight into Redis."""
    s = job.sampling
    sampling = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "stop": list(s.stop) or None,
        "seed": s.seed,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        cap_field: s.max_tokens,
    }
    extra = allowed_extra(job)
    fields = {k: v for k, v in extra.items() if k not in OWN_FIELDS and v is not None}
    fields.update({k: v for k, v in sampling.items() if v is not None})
    return {
        "model": job.upstream_model,
        "messages": job.messages,
        **fields,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


# -- errors ----------------------------------------------------------------------------
def _said(exc: UpstreamStatus | UpstreamStreamError) -> str:
    """The upstream's own words: its error body's message, the body when it is text, else
    the client's fallback ("Error code: 502")."""
    body = exc.error
    message = body.get("message") if isinstance(body, Mapping) else body
    return message if isinstance(message, str) and message else exc.message


def _code(code: object) -> str | None:
    """The upstream's error code, unless it is just the HTTP status again (vLLM, OpenRouter)."""
    return None if code is None or str(code).isdigit() else str(code)


def _status_answer(exc: UpstreamStatus) -> Answer:
    return Answer(
        exc.status,
        _said(exc),
        label=exc.field("type"),
        code=_code(exc.field("code")),
        param=exc.field("param"),
        retry_after=retry_after_seconds(exc.headers),
    )


def _stream_answer(exc: UpstreamStreamError) -> Answer:
    """An error payload inside a 200 stream: status from its numeric code or its type."""
    body = exc.error
    raw, kind, param = body.get("code"), body.get("type"), body.get("param")
    if isinstance(raw, int) or (isinstance(raw, str) and raw.isdigit()):
        status = int(raw)
    else:
        status = STREAM_ERROR_STATUS.get(str(kind), 0) or STREAM_ERROR_STATUS.get(str(raw), 502)
    return Answer(
        status,
        _said(exc),
        label=str(kind) if kind else None,
        code=_code(raw),
        param=str(param) if param is not None else None,
        in_stream=True,
    )


#: What `workers.openai_http` raises -> what the client sees (workers/failures.py).
FAILURES: Table = {
    UpstreamStatus: Answered(_status_answer),
    UpstreamStreamError: Answered(_stream_answer),
    UpstreamTimeout: TIMEOUT,
    UpstreamBroken: replace(
        UNREACHED, if_midstream=Failure(UpstreamError, DROPPED, "upstream_disconnected")
    ),
    UpstreamFailure: FAILED,
}


# -- the stream ------------------------------------------------------------------------
@dataclass
class StreamState:
    """What one upstream stream told us so far."""

    backend: str
    finish: str | None = None
    usage: Usage | None = None
    calls: dict[int, str] = field(default_factory=dict)  # tool-call index -> id


def finish_reason(raw: str, backend: str) -> str:
    """OpenAI's finish reason for an upstream's; an `error` finish is an upstream failure."""
    if raw == "error":
        raise UpstreamError(describe(backend, "ended its stream with an error"))
    reason = FINISH_REASONS.get(raw)
    if reason is None:
        log.info("%s: unknown finish_reason %r, reported as stop", backend, raw)
    return reason or "stop"


def tool_fragment(raw: dict[str, Any], state: StreamState) -> dict[str, Any] | None:
    """One tool-call delta in OpenAI's streaming shape: the first fragment of a call carries
    id, type and name (and `arguments`, maybe ""), later ones only more `arguments`."""
    index = raw.get("index")
    if not isinstance(index, int):  # some servers leave it out: one call per id
        known = [i for i, cid in state.calls.items() if cid == raw.get("id")]
        index = known[0] if known else (len(state.calls) if raw.get("id") else 0)
    function = raw.get("function") or {}
    arguments = function.get("arguments") or ""
    if index not in state.calls:
        state.calls[index] = str(raw.get("id") or f"call_{index}")
        return {
            "index": index,
            "id": state.calls[index],
            "type": "function",
            "function": {"name": function.get("name") or "", "arguments": arguments},
        }
    return {"index": index, "function": {"arguments": arguments}} if arguments else None


def logprob_entry(raw: dict[str, Any]) -> dict[str, Any]:
    """One `logprobs.content` entry in OpenAI's field order (token, bytes, logprob,
    top_logprobs), whatever order or omissions the upstream used."""
    top = [
        {"token": t.get("token"), "bytes": t.get("bytes"), "logprob": t.get("logprob")}
        for t in raw.get("top_logprobs") or ()
    ]
    entry = {"token": raw.get("token"), "bytes": raw.get("bytes"), "logprob": raw.get("logprob")}
    return {**entry, "top_logprobs": top}


def chunk_of(choice: dict[str, Any], state: StreamState) -> Chunk:
    """The Chunk for one upstream choice delta (may be empty: a role-only delta)."""
    delta = choice.get("delta") or {}
    # A refusal is text the client must see; our stream has no separate channel for it.
    text = (delta.get("content") or "") + (delta.get("refusal") or "")
    calls = [
        frag
        for tc in delta.get("tool_calls") or ()
        if (frag := tool_fragment(tc, state)) is not None
    ]
    logprobs = choice.get("logprobs") or {}
    entries = [logprob_entry(e) for e in logprobs.get("content") or ()]
    return Chunk(delta=text, tool_calls=calls or None, logprobs=entries or None)


def relay(events: Iterable[dict[str, Any] | None], state: StreamState) -> Iterator[Chunk]:
    """Non-empty Chunks of the upstream's first choice; finish and usage kept in `state`.
    A keep-alive (None) becomes an empty Chunk: the worker checks the job's deadline and
    cancel flag on it, as on any chunk, and sends nothing."""
    for event in events:
        if event is None:
            yield Chunk()
            continue
        for choice in event.get("choices") or ():
            if choice.get("index", 0):
                continue
            chunk = chunk_of(choice, state)
            if chunk:
                yield chunk
            if choice.get("finish_reason"):
                state.finish = finish_reason(choice["finish_reason"], state.backend)
        usage = event.get("usage")
        if usage:
            state.usage = Usage(
                usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
            )


class OpenAICompatBackend(ClientBackend[ChatClient]):
    """Streams chat jobs to OpenAI-compatible upstreams; one instance per worker process,
    shared by every task thread, with one HTTP client per (base URL, key, headers)."""

    key_required = True  # llm-d: a key is optional
    placeholder_key = ""  # sent when a backend needs no key (the SDK insists on one)

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__(env)
        self._lock = threading.Lock()  # guards _no_usage
        self._no_usage: set[str] = set()  # backends already logged for sending no usage

    def stream(self, job: ChatJob) -> Iterator[Chunk | Done]:
        """Chunks of the upstream's answer, then one Done; retried before the first chunk."""
        reject_unsupported(job)
        ep = endpoint(job, self.env, key_required=self.key_required)
        request = build_request(job, max_tokens_field(job.backend))
        return retrying(
            lambda: self._attempt(job, ep, request),
            self.policy,
            deadline=job.deadline,
            what=job.backend,
        )

    def new_client(self, ep: Endpoint, headers: Mapping[str, str]) -> ChatClient:
        """A client with its own connection pool; it never retries."""
        return ChatClient(
            ep.base_url or OPENAI_BASE_URL,
            ep.key or self.placeholder_key,
            headers,
            Timeouts(read=ep.timeout, connect=ep.connect_timeout),
        )

    def close_client(self, client: ChatClient) -> None:
        """Close its pool: safe while a stream reads through it (that stream's connection
        is closed, not pooled, when it ends)."""
        client.close()

    def _attempt(
        self, job: ChatJob, ep: Endpoint, request: dict[str, Any]
    ) -> Iterator[Chunk | Done]:
        """One upstream request, made on the first next(); closing it closes the response."""
        # Forwarded request headers vary per job: send them per request, so that the client
        # cache stays keyed on the operator's static headers only.
        per_job = {k: v for k, v in ep.headers.items() if k in job.headers}
        static = {k: v for k, v in ep.headers.items() if k not in per_job}
        client = self.client(ep, static)
        try:
            stream = client.stream(request, per_job)
        except UpstreamFailure as exc:
            # `from None`: the raw failure may quote the key; only the scrubbed one goes on
            raise translate(exc, FAILURES, ep) from None
        state = StreamState(job.backend)
        try:
            yield from relay(stream.events(), state)
        except UpstreamFailure as exc:
            raise translate(exc, FAILURES, ep, midstream=True) from None
        finally:
            stream.close()  # at once, also when the consumer stops early
        yield self._done(state)

    def _done(self, state: StreamState) -> Done:
        if state.finish is None:
            raise UpstreamError(
                ended_early(state.backend, "a finish_reason"), code="upstream_truncated"
            )
        if state.usage is None:
            with self._lock:
                first = state.backend not in self._no_usage
                self._no_usage.add(state.backend)
            if first:
                log.info(
                    "%s: the upstream streams no usage (stream_options ignored?); "
                    "reporting zero token counts",
                    state.backend,
                )
        return Done(state.finish, state.usage or Usage(0, 0))
