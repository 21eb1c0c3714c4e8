"""The Google Gemini backend: OpenAI chat jobs through the official `google-genai` SDK,
streamed from `models/{model}:streamGenerateContent` and made to look exactly like OpenAI.

Request translation lives in `workers.google_translate`; this module owns the SDK
clients (workers/clients.py: one per base URL, key, headers and timeouts), reading the
stream into Chunks and one Done, the table of SDK and transport exceptions -> RouterErrors
(read as every provider's is: workers/failures.py), retries (ours, never the SDK's) and
cancellation.
"""

from __future__ import annotations

import importlib
import json
import logging
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from workers.clients import ClientBackend
from workers.errors import UpstreamError
from workers.failures import (
    DROPPED,
    TIMEOUT,
    UNREACHED,
    UNREADABLE,
    Answer,
    Answered,
    Failure,
    Table,
    caught,
    ended_early,
    translate,
)
from workers.google_translate import gemini_request
from workers.protocol import ChatJob, Chunk, Done, Usage
from workers.providers import Endpoint, endpoint
from workers.upstream import retry_after_seconds, retrying

log = logging.getLogger(__name__)

#: The Gemini API version with everything we translate to (JSON schema output, logprobs,
#: thought signatures); the SDK would otherwise pick v1, or GOOGLE_GENAI_API_VERSION.
API_VERSION = "v1beta"


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

#: google.rpc.ErrorInfo reasons that mean more than their HTTP status -> (status, code).
GOOGLE_REASONS = {"API_KEY_INVALID": (401, "invalid_api_key")}

#: Message fragments of a 400 that mean more than "bad request" -> code.
GOOGLE_MESSAGES = {"exceeds the maximum number of tokens": "context_length_exceeded"}

#: Status -> code where the status alone says which thing was wrong.
GOOGLE_STATUS_CODES = {404: "model_not_found"}


def _answer(exc: genai_errors.APIError) -> Answer:
    """Gemini's error answer (an HTTP status, or an `error` chunk in a 200 stream, which
    the SDK raises with the chunk's code): its code refined by the status, the message and
    the google.rpc.ErrorInfo reason; when to retry from Retry-After or RetryInfo."""
    status = int(exc.code or 500)
    message = str(exc.message or exc.status or "")
    code = GOOGLE_STATUS_CODES.get(status)
    for fragment, meaning in GOOGLE_MESSAGES.items():
        if fragment in message.lower():
            code = meaning
    details = _details(exc.details)
    means = status
    for reason in (d.get("reason") for d in details):
        means, code = GOOGLE_REASONS.get(str(reason), (means, code))
    wait = retry_after_seconds(getattr(exc.response, "headers", None))
    return Answer(
        status,
        message,
        label=exc.status,
        code=code,
        retry_after=_retry_delay(details) if wait is None else wait,
        in_stream=getattr(exc.response, "status_code", None) == 200,
        means=means,
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


#: What the SDK and its transports raise -> what the client sees (workers/failures.py).
#: An error answer after content went out is a 502 `upstream_stream_error`: the answer is
#: broken, and its own status would invite a retry the client can no longer make.
FAILURES: Table = {
    genai_errors.APIError: Answered(_answer, midstream_code="upstream_stream_error"),
    **dict.fromkeys(_classes("TimeoutException"), TIMEOUT),
    **dict.fromkeys(_classes("ConnectError"), UNREACHED),
    **dict.fromkeys(
        _classes("TransportError"), Failure(UpstreamError, DROPPED, "upstream_stream_broken")
    ),
    **dict.fromkeys(
        (genai_errors.UnknownApiResponseError, pydantic.ValidationError),
        Failure(UpstreamError, UNREADABLE, "upstream_bad_response"),
    ),
}

#: What the SDK or transport may raise while a stream is open: translated, never leaked.
SDK_ERRORS = caught(FAILURES)


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
                ended_early(self.backend, "a finish reason"), code="upstream_stream_truncated"
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


class GoogleBackend(ClientBackend[genai.Client]):
    """Streams chat jobs from the Gemini API; one instance serves a worker's greenlets.
    Its settings are GEMINI_BASE_URL / _HEADERS / _TIMEOUT and ROUTER_UPSTREAM_*."""

    def new_client(self, ep: Endpoint, headers: Mapping[str, str]) -> genai.Client:
        """The SDK's client, its own retries off (`retrying` decides), with our connect
        timeout: the SDK gives every phase its one timeout."""
        options = types.HttpOptions(
            base_url=ep.base_url,
            api_version=API_VERSION,
            headers=dict(headers),
            timeout=int(ep.timeout * 1000),  # milliseconds; the read timeout between bytes
            retry_options=types.HttpRetryOptions(attempts=1),
            client_args={"event_hooks": {"request": [_connect_timeout(ep.connect_timeout)]}},
        )
        return genai.Client(api_key=ep.key, vertexai=False, http_options=options)

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
            err = translate(exc, FAILURES, ep, midstream=state.started)
            log.warning("%s: %s %s", job.backend, err.status_code, err.message)
            raise err from None  # the SDK's exception may quote the request: keep it out
        finally:
            # Closing the SDK's generator chain closes its HTTP response with it (httpx2
            # closes in iter_raw's finally, httpcore on GeneratorExit): the connection drops.
            close = getattr(upstream, "close", None)
            if close is not None:
                close()
