"""GoogleBackend through the real google-genai SDK against the fake Gemini API
(tests/fakes/gemini_api.py): translation both ways, errors, retries, cancellation."""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.fakes.gemini_api import (
    API_KEY,
    SIGNATURE,
    camel,
    count_tokens,
    frame,
    google_error,
    slow_stream,
    sse_reply,
    start_gemini_fake,
    text_response,
)
from tests.fakes.server import FakeServer, Reply
from workers.errors import (
    AuthenticationError,
    GatewayTimeoutError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    RouterError,
    ServiceUnavailableError,
    UnprocessableError,
    UpstreamError,
)
from workers.google import GoogleBackend
from workers.google_translate import SKIP_SIGNATURE
from workers.protocol import ChatJob, Chunk, Done, Sampling, Usage
from workers.providers import endpoint

MODEL = "gemini-2.5-flash"
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["CET", "UTC"]}},
        },
    },
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake-image").decode()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    server = start_gemini_fake()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _clean(fake: FakeServer) -> None:
    fake.reset()


@pytest.fixture(params=["httpx", "httpx2"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The SDK's HTTP library (it prefers httpx2): each raises its own exception classes,
    and only httpx2 closes an abandoned response by itself."""
    monkeypatch.setenv("GOOGLE_GENAI_HTTP_CLIENT", request.param)
    return str(request.param)


def make_env(fake: FakeServer, **extra: str) -> dict[str, str]:
    return {
        "GEMINI_BASE_URL": fake.url,
        "GEMINI_API_KEY": API_KEY,
        "ROUTER_UPSTREAM_RETRIES": "0",
        "ROUTER_UPSTREAM_BACKOFF": "0.01",
        "ROUTER_UPSTREAM_BACKOFF_MAX": "0.02",
        **extra,
    }


@pytest.fixture
def backend(fake: FakeServer) -> GoogleBackend:
    return GoogleBackend.from_env(make_env(fake))


def job(
    *messages: dict[str, Any], model: str = MODEL, sampling: Sampling | None = None, **extra: Any
) -> ChatJob:
    return ChatJob(
        id="job_g",
        model="gemini",
        backend="google",
        kind="google",
        upstream_model=model,
        messages=list(messages) or [user("Hi there")],
        sampling=sampling or Sampling(),
        extra=extra,
        api_key_env="GEMINI_API_KEY",
    )


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def run(backend: GoogleBackend, j: ChatJob) -> tuple[str, list[Chunk], Done]:
    """Text, chunks and the Done of a stream, checking the contract's shape on the way."""
    *items, done = list(backend.stream(j))
    chunks = [c for c in items if isinstance(c, Chunk) and c]
    assert isinstance(done, Done) and chunks == items  # no empty Chunk, one Done, last
    return "".join(c.delta for c in chunks), chunks, done


def drain(it: Iterator[Chunk | Done]) -> tuple[list[Chunk | Done], RouterError]:
    """What a stream yielded before it raised, and what it raised."""
    got: list[Chunk | Done] = []
    with pytest.raises(RouterError) as info:
        for item in it:
            got.append(item)
    return got, info.value


def sent(fake: FakeServer, i: int = -1) -> dict[str, Any]:
    """Request `i` as the API reads it (field names camelCased)."""
    return camel(fake.requests[i].body)


# -- text ------------------------------------------------------------------------------


def test_text_stream_ends_with_done_and_upstream_usage(
    backend: GoogleBackend, fake: FakeServer
) -> None:
    text, chunks, done = run(
        backend, job({"role": "system", "content": "Be brief."}, user("Hi there"))
    )
    assert text == "Hello from Gemini! You said: Hi there"
    assert len(chunks) == 3  # streamed, not one blob
    assert done == Done("stop", Usage(count_tokens("Be brief. Hi there"), count_tokens(text)))
    req = fake.requests[0]
    assert req.path == f"/v1beta/models/{MODEL}:streamGenerateContent"
    assert "alt=sse" in req.query
    assert req.headers["x-goog-api-key"] == API_KEY
    assert API_KEY not in json.dumps(req.body)
    assert sent(fake)["systemInstruction"] == {"parts": [{"text": "Be brief."}]}


def test_sampling_fields_reach_generation_config(backend: GoogleBackend, fake: FakeServer) -> None:
    sampling = Sampling(
        max_tokens=64,
        temperature=0.2,
        top_p=0.9,
        stop=("END", "STOP"),
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
    )
    run(backend, job(sampling=sampling))
    assert sent(fake)["generationConfig"] == {
        "maxOutputTokens": 64,
        "temperature": 0.2,
        "topP": 0.9,
        "stopSequences": ["END", "STOP"],
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
    }


def test_roles_map_and_consecutive_turns_merge(backend: GoogleBackend, fake: FakeServer) -> None:
    run(
        backend,
        job(
            {"role": "system", "content": "Rule one."},
            {"role": "developer", "content": [{"type": "text", "text": "Rule two."}]},
            user("First."),
            user([{"type": "text", "text": "Second."}]),
            {"role": "assistant", "content": "An answer."},
            user("Again."),
        ),
    )
    body = sent(fake)
    assert body["systemInstruction"]["parts"] == [{"text": "Rule one."}, {"text": "Rule two."}]
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "First."}, {"text": "Second."}]},
        {"role": "model", "parts": [{"text": "An answer."}]},
        {"role": "user", "parts": [{"text": "Again."}]},
    ]


def test_images_become_inline_or_file_data(backend: GoogleBackend, fake: FakeServer) -> None:
    run(
        backend,
        job(
            user(
                [
                    {"type": "text", "text": "Compare these."},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.jpg?size=2"},
                    },
                ]
            )
        ),
    )
    parts = sent(fake)["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}
    assert parts[2] == {
        "fileData": {"fileUri": "https://example.com/cat.jpg?size=2", "mimeType": "image/jpeg"}
    }


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (
            [{"type": "image_url", "image_url": {"url": "https://example.com/picture"}}],
            "messages[0].content[0].image_url",
        ),
        (
            [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@not-b64@@"}}],
            "messages[0].content[0].image_url",
        ),
        (
            [{"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}],
            "messages[0].content[0].image_url",
        ),
        ([{"type": "video", "video": {}}], "messages[0].content[0].type"),
    ],
)
def test_unusable_content_is_a_400_before_any_call(
    backend: GoogleBackend, fake: FakeServer, content: Any, param: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        backend.stream(job(user(content)))
    assert info.value.param == param and "google" in info.value.message
    assert fake.requests == []


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]"),
        ({"tools": [WEATHER, "get_time"]}, "tools[1]"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
        ),
    ],
)
def test_fields_gemini_cannot_honour_are_a_400(
    backend: GoogleBackend, fake: FakeServer, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        backend.stream(job(**extra))
    assert info.value.param == param and info.value.status_code == 400
    assert fake.requests == []


def test_unknown_role_is_a_400(backend: GoogleBackend) -> None:
    with pytest.raises(InvalidRequestError) as info:
        backend.stream(job({"role": "function", "name": "f", "content": "x"}))
    assert info.value.param == "messages[0].role"


# -- tools -----------------------------------------------------------------------------


def test_tool_call_streams_in_openai_shape(backend: GoogleBackend, fake: FakeServer) -> None:
    text, chunks, done = run(backend, job(user("Weather in Paris?"), tools=[WEATHER]))
    assert text == "" and len(chunks) == 1
    (call,) = chunks[0].tool_calls or []
    assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"])
    assert call == {
        "index": 0,
        "id": call["id"],
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    assert done.finish_reason == "tool_calls" and done.usage == Usage(3, 3)
    (tool,) = sent(fake)["tools"]
    assert tool["functionDeclarations"] == [
        {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parametersJsonSchema": WEATHER["function"]["parameters"],
        }
    ]


def test_tool_round_trip(backend: GoogleBackend, fake: FakeServer) -> None:
    question = user("Weather in Paris?")
    _, chunks, _ = run(backend, job(question, tools=[WEATHER]))
    call = (chunks[0].tool_calls or [])[0]
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": call["id"], "type": "function", "function": call["function"]}],
    }
    result = {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 21}'}
    text, _, done = run(backend, job(question, assistant, result, tools=[WEATHER]))
    assert text == 'The function get_weather returned {"temp_c": 21}.'
    assert done.finish_reason == "stop"
    contents = sent(fake)["contents"]
    signature = base64.b64encode(SKIP_SIGNATURE).decode()
    assert contents[1] == {
        "role": "model",
        "parts": [
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                "thoughtSignature": signature,
            }
        ],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}}],
    }


def test_parallel_calls_and_their_results_share_turns(
    backend: GoogleBackend, fake: FakeServer
) -> None:
    question = user("Weather and time, in parallel please.")
    _, chunks, done = run(backend, job(question, tools=[WEATHER, TIME]))
    calls = [c for chunk in chunks for c in chunk.tool_calls or []]
    assert [(c["index"], c["function"]["name"]) for c in calls] == [
        (0, "get_weather"),
        (1, "get_time"),
    ]
    assert calls[0]["id"] != calls[1]["id"] and done.finish_reason == "tool_calls"
    assistant = {
        "role": "assistant",
        "tool_calls": [
            {"id": c["id"], "type": "function", "function": c["function"]} for c in calls
        ],
    }
    results = [
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "12:00"},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": '["sunny"]'},
    ]
    text, _, _ = run(backend, job(question, assistant, *results, tools=[WEATHER, TIME]))
    assert text == (
        'The function get_time returned {"result": "12:00"}. '
        'The function get_weather returned {"result": "[\\"sunny\\"]"}.'
    )
    model_turn, answers = sent(fake)["contents"][1:]
    assert [p.get("thoughtSignature") is not None for p in model_turn["parts"]] == [True, False]
    assert [p["functionResponse"]["name"] for p in answers["parts"]] == ["get_time", "get_weather"]


def test_client_supplied_thought_signature_is_replayed(
    backend: GoogleBackend, fake: FakeServer
) -> None:
    assistant = {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "extra_content": {"google": {"thought_signature": SIGNATURE}},
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ],
    }
    result = {"role": "tool", "tool_call_id": "call_1", "content": "cold"}
    run(backend, job(user("Weather?"), assistant, result, tools=[WEATHER]))
    assert sent(fake)["contents"][1]["parts"][0]["thoughtSignature"] == SIGNATURE


def test_tool_result_for_an_unknown_call_is_a_400(backend: GoogleBackend) -> None:
    with pytest.raises(InvalidRequestError) as info:
        backend.stream(job(user("Hi"), {"role": "tool", "tool_call_id": "call_x", "content": "1"}))
    assert info.value.param == "messages[1].tool_call_id"


@pytest.mark.parametrize(
    ("choice", "config", "calls"),
    [
        ("none", {"mode": "NONE"}, False),
        ("auto", {"mode": "AUTO"}, True),
        ("required", {"mode": "ANY"}, True),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
            True,
        ),
    ],
)
def test_tool_choice_becomes_function_calling_config(
    backend: GoogleBackend, fake: FakeServer, choice: Any, config: dict[str, Any], calls: bool
) -> None:
    _, chunks, done = run(backend, job(user("Go."), tools=[WEATHER, TIME], tool_choice=choice))
    assert sent(fake)["toolConfig"] == {"functionCallingConfig": config}
    assert (done.finish_reason == "tool_calls") is calls
    if isinstance(choice, dict):
        assert (chunks[0].tool_calls or [])[0]["function"]["name"] == "get_time"


def test_bad_tool_call_arguments_are_a_400(backend: GoogleBackend) -> None:
    assistant = {
        "role": "assistant",
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
        ],
    }
    with pytest.raises(InvalidRequestError) as info:
        backend.stream(job(user("Hi"), assistant))
    assert info.value.param == "messages[1].tool_calls[0].function"


# -- output formats --------------------------------------------------------------------


def test_json_object_mode(backend: GoogleBackend, fake: FakeServer) -> None:
    text, _, done = run(backend, job(response_format={"type": "json_object"}))
    assert json.loads(text) == {"answer": "Paris"} and done.finish_reason == "stop"
    assert sent(fake)["generationConfig"]["responseMimeType"] == "application/json"


def test_json_schema_mode(backend: GoogleBackend, fake: FakeServer) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}
    text, _, _ = run(backend, job(response_format=fmt))
    assert json.loads(text) == {"city": "Paris", "population": 3}
    config = sent(fake)["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == schema


def test_logprobs_ride_along_with_text(backend: GoogleBackend, fake: FakeServer) -> None:
    _, chunks, _ = run(backend, job(logprobs=True, top_logprobs=2))
    config = sent(fake)["generationConfig"]
    assert config["responseLogprobs"] is True and config["logprobs"] == 2
    first = chunks[0].logprobs or []
    assert [e["token"] for e in first] == chunks[0].delta.split(" ")
    assert first[0] == {
        "token": "Hello",
        "logprob": -0.25,
        "bytes": list(b"Hello"),
        "top_logprobs": [
            {"token": "Hello", "logprob": -0.25, "bytes": list(b"Hello")},
            {"token": "alt0", "logprob": -3.0, "bytes": list(b"alt0")},
        ],
    }
    assert all(c.logprobs for c in chunks)


def test_thought_parts_are_hidden_but_billed(backend: GoogleBackend) -> None:
    text, _, done = run(backend, job(user("think first")))
    assert "think about" not in text and text == "Hello from Gemini! You said: think first"
    assert done.usage == Usage(2, count_tokens(text) + 5)


def test_max_tokens_ends_with_length(backend: GoogleBackend) -> None:
    text, _, done = run(backend, job(sampling=Sampling(max_tokens=2)))
    assert text == "Hello from" and done == Done("length", Usage(2, 2))


def test_safety_stop_is_content_filter(backend: GoogleBackend) -> None:
    text, _, done = run(backend, job(user("something forbidden")))
    assert text == "Let me" and done == Done("content_filter", Usage(2, 2))


def test_blocked_prompt_is_content_filter_without_text(backend: GoogleBackend) -> None:
    items = list(backend.stream(job(user("please blockprompt this now"))))
    assert items == [Done("content_filter", Usage(4, 0))]


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (422, UnprocessableError),
        (429, RateLimitError),
        (500, UpstreamError),
        (503, ServiceUnavailableError),
        (504, GatewayTimeoutError),
    ],
)
def test_upstream_status_maps_to_router_error(
    backend: GoogleBackend, fake: FakeServer, status: int, cls: type[RouterError]
) -> None:
    fake.fail_next(google_error(status, f"Upstream says {status}."))
    _, err = drain(backend.stream(job()))
    assert type(err) is cls and err.status_code == cls.status_code
    assert "google" in err.message and f"Upstream says {status}." in err.message
    assert len(fake.requests) == 1


def test_non_json_413_from_the_front_end(backend: GoogleBackend, fake: FakeServer) -> None:
    page = b"<html><title>413 Request Entity Too Large</title></html>"
    fake.fail_next(Reply(413, chunks=[page], content_type="text/html"))
    _, err = drain(backend.stream(job()))
    assert isinstance(err, RequestTooLargeError) and "413" in err.message


def test_wrong_key_is_401_and_never_echoed(fake: FakeServer) -> None:
    wrong = "AIzaWRONG-key-that-must-never-leak-0000"
    backend = GoogleBackend.from_env(make_env(fake, GEMINI_API_KEY=wrong))
    _, err = drain(backend.stream(job()))
    assert isinstance(err, AuthenticationError) and err.code == "invalid_api_key"
    assert "API key not valid" in err.message


def test_key_echoed_by_upstream_is_scrubbed(backend: GoogleBackend, fake: FakeServer) -> None:
    fake.fail_next(google_error(400, f"API key {API_KEY} is not valid for this project."))
    _, err = drain(backend.stream(job()))
    assert API_KEY not in err.message and API_KEY[:8] not in err.message
    assert "***" in err.message and err.status_code == 400


def test_unknown_model_is_model_not_found(backend: GoogleBackend) -> None:
    _, err = drain(backend.stream(job(model="palm-2")))
    assert isinstance(err, NotFoundError) and err.code == "model_not_found"
    assert "models/palm-2 is not found" in err.message


def test_too_long_prompt_is_context_length_exceeded(
    backend: GoogleBackend, fake: FakeServer
) -> None:
    fake.fail_next(
        google_error(
            400,
            "The input token count (1200000) exceeds the maximum "
            "number of tokens allowed (1048576).",
        )
    )
    _, err = drain(backend.stream(job()))
    assert err.status_code == 400 and err.code == "context_length_exceeded"


def test_missing_key_fails_before_any_call(fake: FakeServer) -> None:
    env = make_env(fake)
    del env["GEMINI_API_KEY"]
    with pytest.raises(AuthenticationError):
        GoogleBackend.from_env(env).stream(job())
    assert fake.requests == []


def test_timeout_is_504(fake: FakeServer, transport: str) -> None:
    backend = GoogleBackend.from_env(make_env(fake, GEMINI_TIMEOUT="0.3"))
    fake.fail_next(
        Reply(
            delay=1.5,
            chunks=[frame(text_response("late", "STOP"))],
            content_type="text/event-stream",
        )
    )
    started = time.monotonic()
    _, err = drain(backend.stream(job()))
    assert isinstance(err, GatewayTimeoutError) and err.code == "timeout"
    assert time.monotonic() - started < 1.4


def test_connection_refused_is_upstream_unreachable(fake: FakeServer, transport: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    backend = GoogleBackend.from_env(make_env(fake, GEMINI_BASE_URL=f"http://127.0.0.1:{port}"))
    _, err = drain(backend.stream(job()))
    assert isinstance(err, UpstreamError) and err.code == "upstream_unreachable"
    assert err.status_code == 502


# -- retries ---------------------------------------------------------------------------


def retrying_backend(fake: FakeServer, retries: int = 2) -> GoogleBackend:
    return GoogleBackend.from_env(make_env(fake, ROUTER_UPSTREAM_RETRIES=str(retries)))


def test_retry_then_success(fake: FakeServer) -> None:
    fake.fail_next(
        google_error(503, "The model is overloaded."), google_error(503, "The model is overloaded.")
    )
    text, _, done = run(retrying_backend(fake), job())
    assert text.startswith("Hello from Gemini") and done.finish_reason == "stop"
    assert len(fake.requests) == 3


def test_retries_exhausted(fake: FakeServer) -> None:
    fake.fail_next(*[google_error(503, "The model is overloaded.")] * 3)
    _, err = drain(retrying_backend(fake).stream(job()))
    assert isinstance(err, ServiceUnavailableError) and len(fake.requests) == 3


def test_429_retry_after_header_is_waited_for(fake: FakeServer) -> None:
    fake.fail_next(google_error(429, "Quota exceeded.", headers={"Retry-After": "0.4"}))
    started = time.monotonic()
    run(retrying_backend(fake), job())
    assert time.monotonic() - started >= 0.4 and len(fake.requests) == 2


def test_429_retry_info_delay_is_waited_for(fake: FakeServer) -> None:
    fake.fail_next(google_error(429, "Quota exceeded.", retry_delay="0.3s"))
    started = time.monotonic()
    run(retrying_backend(fake), job())
    assert time.monotonic() - started >= 0.3 and len(fake.requests) == 2


def test_429_too_far_off_is_not_retried_and_carries_retry_after(fake: FakeServer) -> None:
    fake.fail_next(google_error(429, "Quota exceeded.", headers={"Retry-After": "120"}))
    _, err = drain(retrying_backend(fake).stream(job()))
    assert isinstance(err, RateLimitError) and err.retry_after == 120
    assert len(fake.requests) == 1


def test_error_event_before_content_is_retried(fake: FakeServer) -> None:
    overloaded = {"error": {"code": 503, "message": "Overloaded.", "status": "UNAVAILABLE"}}
    fake.fail_next(sse_reply([overloaded]))
    text, _, _ = run(retrying_backend(fake), job())
    assert text.startswith("Hello") and len(fake.requests) == 2


def test_no_retry_after_the_first_chunk(fake: FakeServer, transport: str) -> None:
    frames = [text_response("One "), text_response("two "), text_response("three", "STOP")]
    fake.fail_next(sse_reply(frames, abort_after=2))
    got, err = drain(retrying_backend(fake).stream(job()))
    assert [c.delta for c in got] == ["One ", "two "]  # type: ignore[union-attr]
    assert type(err) is UpstreamError and err.status_code == 502
    assert len(fake.requests) == 1


def test_error_event_mid_stream_is_502(fake: FakeServer) -> None:
    boom = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    fake.fail_next(sse_reply([text_response("Partial "), boom]))
    got, err = drain(retrying_backend(fake).stream(job()))
    assert [c.delta for c in got] == ["Partial "]  # type: ignore[union-attr]
    assert type(err) is UpstreamError and err.code == "upstream_stream_error"
    assert "The model is overloaded." in err.message
    assert len(fake.requests) == 1


def test_stream_without_finish_reason_is_truncated(
    backend: GoogleBackend, fake: FakeServer
) -> None:
    fake.fail_next(sse_reply([text_response("Half an ")]))
    got, err = drain(backend.stream(job()))
    assert len(got) == 1 and err.code == "upstream_stream_truncated" and err.status_code == 502


# -- lifecycle -------------------------------------------------------------------------


def test_closing_the_stream_closes_the_upstream_connection(
    fake: FakeServer, transport: str
) -> None:
    backend = GoogleBackend.from_env(make_env(fake))
    http = backend.client(endpoint(job(), backend.env))._api_client._httpx_client
    assert any(cls.__module__.split(".")[0] == transport for cls in type(http).__mro__)
    probe = slow_stream(fake, frames=40, interval=0.05)
    stream = backend.stream(job())
    first = next(stream)
    assert isinstance(first, Chunk) and first.delta == "word0 "
    stream.close()  # type: ignore[attr-defined]
    assert probe.stopped.wait(3), "the fake kept streaming to a closed iterator"
    assert not probe.completed and probe.sent < probe.total


def test_clients_are_cached_per_endpoint(fake: FakeServer) -> None:
    backend = GoogleBackend.from_env(make_env(fake, GEMINI_HEADERS='{"X-Tenant": "blue"}'))
    ep = endpoint(job(), backend.env)
    assert backend.client(ep) is backend.client(endpoint(job(), backend.env))
    other = GoogleBackend.from_env(make_env(fake, GEMINI_HEADERS='{"X-Tenant": "red"}'))
    assert other.client(endpoint(job(), other.env)) is not backend.client(ep)
    run(backend, job())
    assert fake.requests[-1].headers["x-tenant"] == "blue"


def test_connect_timeout_is_the_endpoint_s(fake: FakeServer) -> None:
    backend = GoogleBackend.from_env(make_env(fake, GEMINI_TIMEOUT="30"))
    ep = endpoint(job(), backend.env)
    http = backend.client(ep)._api_client._httpx_client
    request = http.build_request("POST", fake.url, timeout=30.0)  # as the SDK builds it
    for hook in http.event_hooks["request"]:
        hook(request)
    assert request.extensions["timeout"] == {
        "connect": ep.connect_timeout,
        "read": 30.0,
        "write": 30.0,
        "pool": 30.0,
    }


def test_concurrent_streams_stay_apart(backend: GoogleBackend) -> None:
    def one(i: int) -> str:
        return run(backend, job(user(f"number {i}")))[0]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(16)))
    assert answers == [f"Hello from Gemini! You said: number {i}" for i in range(16)]


# -- the fake itself -------------------------------------------------------------------


def test_fake_answers_non_streaming_and_json_array(fake: FakeServer) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "Hi there"}]}]}
    headers = {"x-goog-api-key": API_KEY}
    base = f"{fake.url}/v1beta/models/{MODEL}"
    one = httpx.post(f"{base}:generateContent", json=body, headers=headers).json()
    assert one["candidates"][0]["content"]["parts"][0]["text"] == "Hello from Gemini! "
    assert "".join(p["text"] for p in one["candidates"][0]["content"]["parts"]).endswith("there")
    listed = httpx.post(f"{base}:streamGenerateContent", json=body, headers=headers).json()
    assert isinstance(listed, list) and listed[-1]["candidates"][0]["finishReason"] == "STOP"
    refused = httpx.post(f"{base}:generateContent", json=body)
    assert refused.status_code == 403 and refused.json()["error"]["status"] == "PERMISSION_DENIED"
