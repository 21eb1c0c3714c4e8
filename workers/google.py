"""The Google Gemini backend: OpenAI chat jobs through the official `google-genai` SDK,
streamed from `models/{model}:streamGenerateContent` and made to look exactly like OpenAI.

Request translation lives in `workers.google_translate`; this module owns the SDK
clients (one per base URL, key and headers), reading the stream into Chunks and one
Done, the single mapping of SDK and transport exceptions to RouterErrors, retries (ours,
never the SDK's) and cancellation.
"""

from __future__ import annotations

import importlib
import json
import logging
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from workers.errors import GatewayTimeoutError, RouterError, UpstreamError
from workers.google_translate import gemini_request
from workers.protocol import ChatJob, Chunk, Done, Usage
from workers.providers import Endpoint, endpoint
from workers.upstream import RetryPolicy, retry_after_seconds, retrying, scrub, status_error

log = logging.getLogger(__name__)

#: The Gemini API version with everything we translate to (JSON schema output, logprobs,
#: thought signatures); the SDK would otherwise pick v1, or GOOGLE_GENAI_API_VERSION.
API_VERSION = "v1beta"

ClientKey = tuple[str, str, tuple[tuple[str, str], ...], float, float]


def _http_libraries() -> list[Any]:
    """httpx, and httpx2 where installed: the SDK sends with httpx2 when it can."""
    found = []
    for name in ("httpx", "httpx2"):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue  # that transport is not installed, so the SDK cannot raise its errors
    return found


def _classes(attr: str) -> tuple[type[BaseException], ...]:
    return tuple(getattr(lib, attr) for lib in _http_libraries())


#: Gemini finishReason -> OpenAI finish_reason (anything else ends as "stop").
FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(
        [
            "SAFETY",
            "RECITATION",
            "BLOCKLIST",
            "PROHIBITED_CONTENT",
            "SPII",
            "IMAGE_SAFETY",
            "IMAGE_PROHIBITED_CONTENT",
            "IMAGE_RECITATION",
            "MODEL_ARMOR",
        ],
        "content_filter",
    ),
}

#: Failures with no HTTP status, by class (first match wins) -> (error, code, what happened).
TRANSPORT_ERRORS: list[tuple[tuple[type[BaseException], ...], type[RouterError], str, str]] = [
    (_classes("TimeoutException"), GatewayTimeoutError, "timeout", "timed out"),
    (_classes("ConnectError"), UpstreamError, "upstream_unreachable", "could not be reached"),
    (
        _classes("TransportError"),
        UpstreamError,
        "upstream_stream_broken",
        "dropped the connection",
    ),
    (
        (genai_errors.UnknownApiResponseError, pydantic.ValidationError),
        UpstreamError,
        "upstream_bad_response",
        "sent a response that is not a GenerateContentResponse",
    ),
]

#: What the SDK or transport may raise while a stream is open: translated, never leaked.
SDK_ERRORS: tuple[type[BaseException], ...] = (
    genai_errors.APIError,
    *(cls for classes, *_ in TRANSPORT_ERRORS for cls in classes),
)

#: google.rpc.ErrorInfo reasons that mean more than their HTTP status -> (status, code).
GOOGLE_REASONS = {"API_KEY_INVALID": (401, "invalid_api_key")}

#: Message fragments of a 400 that mean more than "bad request" -> code.
GOOGLE_MESSAGES = {"exceeds the maximum number of tokens": "context_length_exceeded"}

#: Status -> code where the status alone says which thing was wrong.
GOOGLE_STATUS_CODES = {404: "model_not_found"}


def translate_error(
    exc: BaseException, ep: Endpoint, backend: str, *, midstream: bool = False
) -> RouterError:
    """The one mapping of SDK/transport exceptions to what the client sees.

    `midstream`: content already went to the client, so an upstream error event becomes a
    502 (the answer is broken) rather than its HTTP status (which would invite a retry)."""
    if isinstance(exc, genai_errors.APIError):
        return _api_error(exc, ep, backend, midstream)
    for classes, cls, code, what in TRANSPORT_ERRORS:
        if isinstance(exc, classes):
            detail = scrub(str(exc) or type(exc).__name__, ep.secrets())
            return cls(f"The `{backend}` backend's upstream (Gemini) {what}: {detail}", code=code)
    return UpstreamError(f"The `{backend}` backend failed: {type(exc).__name__}")


def _api_error(
    exc: genai_errors.APIError, ep: Endpoint, backend: str, midstream: bool
) -> RouterError:
    status = int(exc.code or 500)
    text = scrub(str(exc.message or exc.status or "no message"), ep.secrets())
    message = f"The `{backend}` backend's upstream (Gemini) answered {status} {exc.status}: {text}"
    if midstream:
        return UpstreamError(message, code="upstream_stream_error")
    code = GOOGLE_STATUS_CODES.get(status)
    for fragment, meaning in GOOGLE_MESSAGES.items():
        if fragment in text.lower():
            code = meaning
    details = _details(exc.details)
    for reason in (d.get("reason") for d in details):
        status, code = GOOGLE_REASONS.get(str(reason), (status, code))
    headers = getattr(exc.response, "headers", None)
    wait = retry_after_seconds(headers)
    return status_error(
        status, message, code=code, retry_after=_retry_delay(details) if wait is None else wait
    )


def _details(body: Any) -> list[dict[str, Any]]:
    """The `details` of Google's error body (ErrorInfo, RetryInfo, ...)."""
    error = body.get("error", body) if isinstance(body, dict) else {}
    items = error.get("details") if isinstance(error, dict) else None
    return [d for d in items or [] if isinstance(d, dict)]


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    """google.rpc.RetryInfo's retryDelay ("17s"): Gemini's 429s say when, in the body."""
    for item in details:
        delay = item.get("retryDelay")
        if str(item.get("@type", "")).endswith("RetryInfo") and isinstance(delay, str):
            try:
                return max(0.0, float(delay.rstrip("s")))
            except ValueError:
                return None
    return None


def _connect_timeout(seconds: float) -> Callable[[Any], None]:
    """httpx request hook: the SDK gives every phase its one timeout; connect gets ours."""

    def hook(request: Any) -> None:
        timeout = request.extensions.get("timeout")
        if isinstance(timeout, dict):
            request.extensions["timeout"] = {**timeout, "connect": seconds}

    return hook


# -- reading the stream ----------------------------------------------------------------


@dataclass
class ResponseState:
    """What one streamed answer has shown so far: tool calls, finish, usage."""

    backend: str
    tool_calls: int = 0
    finish: str | None = None
    usage: Usage | None = None
    started: bool = False  # something has been handed to the client

    def feed(self, response: types.GenerateContentResponse) -> list[Chunk]:
        """The chunks of one streamed GenerateContentResponse."""
        self.usage = _usage(response.usage_metadata) or self.usage
        feedback = response.prompt_feedback
        if not response.candidates:
            if feedback is not None and feedback.block_reason is not None:
                self.finish = "content_filter"  # the prompt itself was blocked
            return []
        candidate = response.candidates[0]
        chunks = self._content(candidate)
        if candidate.finish_reason is not None:
            reason = str(getattr(candidate.finish_reason, "value", candidate.finish_reason))
            finish = FINISH_REASONS.get(reason, "stop")
            self.finish = "tool_calls" if finish == "stop" and self.tool_calls else finish
        self.started = self.started or bool(chunks)
        return chunks

    def _content(self, candidate: types.Candidate) -> list[Chunk]:
        parts = candidate.content.parts if candidate.content else None
        text = "".join(p.text for p in parts or [] if p.text and not p.thought)
        logprobs = _logprob_entries(candidate.logprobs_result) if text else None
        chunks = [Chunk(delta=text, logprobs=logprobs)] if text else []
        for part in parts or []:
            if part.function_call is not None:
                chunks.append(Chunk(tool_calls=[self._tool_call(part.function_call)]))
        return chunks

    def _tool_call(self, call: types.FunctionCall) -> dict[str, Any]:
        index, self.tool_calls = self.tool_calls, self.tool_calls + 1
        return {
            "index": index,
            "id": f"call_{secrets.token_hex(12)}",  # Gemini gives none
            "type": "function",
            "function": {"name": call.name or "", "arguments": json.dumps(call.args or {})},
        }

    def done(self) -> Done:
        """The closing Done; an answer that never said why it ended was cut off."""
        if self.finish is None:
            raise UpstreamError(
                f"The `{self.backend}` backend's stream (Gemini) ended before "
                "a finish reason: the answer was cut off.",
                code="upstream_stream_truncated",
            )
        return Done(self.finish, self.usage or Usage(0, 0))


def _usage(meta: types.GenerateContentResponseUsageMetadata | None) -> Usage | None:
    """Gemini's counts: tool-use prompt tokens are input, thinking tokens are output."""
    if meta is None or (meta.prompt_token_count is None and meta.candidates_token_count is None):
        return None
    return Usage(
        prompt_tokens=(meta.prompt_token_count or 0) + (meta.tool_use_prompt_token_count or 0),
        completion_tokens=(meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0),
    )


def _logprob_entries(result: types.LogprobsResult | None) -> list[dict[str, Any]] | None:
    """Gemini's chosen/top candidates as OpenAI `logprobs.content` entries."""
    if result is None or not result.chosen_candidates:
        return None
    tops = result.top_candidates or []
    entries = []
    for i, chosen in enumerate(result.chosen_candidates):
        top = (tops[i].candidates if i < len(tops) else None) or []
        entries.append({**_logprob(chosen), "top_logprobs": [_logprob(c) for c in top]})
    return entries


def _logprob(candidate: types.LogprobsResultCandidate) -> dict[str, Any]:
    token = candidate.token or ""
    return {
        "token": token,
        "logprob": candidate.log_probability if candidate.log_probability is not None else 0.0,
        "bytes": list(token.encode()),
    }


class GoogleBackend:
    """Streams chat jobs from the Gemini API; one instance serves a worker's greenlets."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.policy = RetryPolicy.from_env(self.env)
        self._clients: dict[ClientKey, genai.Client] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GoogleBackend:
        """GEMINI_BASE_URL / _HEADERS / _TIMEOUT and ROUTER_UPSTREAM_* from `env`."""
        return cls(env)

    def client(self, ep: Endpoint) -> genai.Client:
        """The SDK client for this endpoint, built once; the SDK itself never retries."""
        key: ClientKey = (
            str(ep.base_url),
            str(ep.key),
            tuple(sorted(ep.headers.items())),
            ep.timeout,
            ep.connect_timeout,
        )
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = _new_client(ep)
            return client

    def stream(self, job: ChatJob) -> Iterator[Chunk | Done]:
        """Chunks then one Done; a request Gemini cannot honour fails here, before any call."""
        ep = endpoint(job, self.env)
        contents, config = gemini_request(job)

        def open_stream() -> Iterator[Chunk | Done]:
            return self._attempt(job, ep, contents, config)

        return retrying(open_stream, self.policy, deadline=job.deadline, what=job.backend)

    def _attempt(
        self,
        job: ChatJob,
        ep: Endpoint,
        contents: list[types.Content],
        config: types.GenerateContentConfig,
    ) -> Iterator[Chunk | Done]:
        """One upstream request (sent on the first next()); yields only real content."""
        state = ResponseState(job.backend)
        upstream = self.client(ep).models.generate_content_stream(
            model=job.upstream_model, contents=contents, config=config
        )
        try:
            for response in upstream:
                yield from state.feed(response)
            yield state.done()
        except SDK_ERRORS as exc:
            err = translate_error(exc, ep, job.backend, midstream=state.started)
            log.warning("%s: %s %s", job.backend, err.status_code, err.message)
            raise err from None  # the SDK's exception may quote the request: keep it out
        finally:
            # Closing the SDK's generator chain closes its HTTP response with it (httpx2
            # closes in iter_raw's finally, httpcore on GeneratorExit): the connection drops.
            close = getattr(upstream, "close", None)
            if close is not None:
                close()


def _new_client(ep: Endpoint) -> genai.Client:
    options = types.HttpOptions(
        base_url=ep.base_url,
        api_version=API_VERSION,
        headers=dict(ep.headers),
        timeout=int(ep.timeout * 1000),  # milliseconds; the read timeout between bytes
        retry_options=types.HttpRetryOptions(attempts=1),  # `retrying` decides, once
        client_args={"event_hooks": {"request": [_connect_timeout(ep.connect_timeout)]}},
    )
    return genai.Client(api_key=ep.key, vertexai=False, http_options=options)
