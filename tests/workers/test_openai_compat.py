"""OpenAICompatBackend through the real `openai` SDK against the fake OpenAI API: the stream,
tools, JSON mode, logprobs, every error class, retries, cancellation and key hygiene."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
from openai import OpenAI

from tests.fakes import openai_api as api
from tests.fakes.openai_api import OpenAIFake, openai_error, start_openai_fake, words
from tests.fakes.server import Reply, sse
from workers import errors
from workers.openai_compat import OpenAICompatBackend
from workers.protocol import ChatJob, Chunk, Done, Sampling, Usage

KEY = "sk-test-PLANTED-0123456789abcdef"
KEY_ENV = "ROUTER_TEST_OPENAI_KEY"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def fake() -> Iterator[OpenAIFake]:
    server = start_openai_fake(api_key=KEY)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh(fake: OpenAIFake) -> None:
    fake.reset()


def env_for(fake: OpenAIFake, **extra: str) -> dict[str, str]:
    """A worker environment pointing every compatible backend at the fake, no retries."""
    base = fake.url + "/v1"
    return {
        "OPENAI_BASE_URL": base,
        "OPENROUTER_BASE_URL": base,
        "XAI_BASE_URL": base,
        "ACME_BASE_URL": base,
        KEY_ENV: KEY,
        "ROUTER_KEY_ENV_ALLOWLIST": KEY_ENV,  # the key's variable is not OPENAI_API_KEY
        "ROUTER_UPSTREAM_RETRIES": "0",
        "ROUTER_UPSTREAM_BACKOFF": "0.01",
        "ROUTER_UPSTREAM_BACKOFF_MAX": "0.02",
        **extra,
    }


def backend_for(fake: OpenAIFake, **extra: str) -> OpenAICompatBackend:
    return OpenAICompatBackend.from_env(env_for(fake, **extra))


def job(content: str = "What is up?", backend: str = "openai", **kw: Any) -> ChatJob:
    fields: dict[str, Any] = {
        "id": "job_1",
        "model": "gpt-public",
        "backend": backend,
        "kind": "openai-compatible",
        "upstream_model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": content}],
        "api_key_env": KEY_ENV,
        **kw,
    }
    return ChatJob(**fields)


def collect(items: Iterator[Chunk | Done]) -> tuple[list[Chunk], Done]:
    chunks: list[Chunk] = []
    done: list[Done] = []
    for item in items:
        if isinstance(item, Done):
            done.append(item)
        else:
            assert item, "an empty Chunk was yielded"
            assert not done, "a Chunk came after Done"
            chunks.append(item)
    assert len(done) == 1
    return chunks, done[0]


def text(chunks: list[Chunk]) -> str:
    return "".join(c.delta for c in chunks)


def chat_requests(fake: OpenAIFake) -> list[Any]:
    return [r for r in fake.requests if r.path == "/v1/chat/completions"]


# -- the happy paths -------------------------------------------------------------------
def test_text_stream_ends_with_done_and_the_upstreams_exact_usage(fake: OpenAIFake) -> None:
    chunks, done = collect(backend_for(fake).stream(job("What is up?")))
    assert [c.delta for c in chunks] == ["Hello! ", "You ", "said: ", "What ", "is ", "up?"]
    assert done == Done("stop", Usage(prompt_tokens=6, completion_tokens=6))
    assert fake.usages == [{"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12}]
    (req,) = chat_requests(fake)
    assert req.body["stream"] is True and req.body["stream_options"] == {"include_usage": True}
    assert req.body["model"] == "gpt-4o-mini"
    assert req.body["messages"] == [{"role": "user", "content": "What is up?"}]
    for name in ("temperature", "top_p", "stop", "seed", "max_tokens", "max_completion_tokens"):
        assert name not in req.body  # unset sampling fields are left to the upstream
    assert fake.authorizations == {f"Bearer {KEY}": 1} and fake.bearer_only(KEY)


def test_sampling_and_extra_fields_pass_through(fake: OpenAIFake) -> None:
    sampling = Sampling(40, temperature=0.3, top_p=0.9, stop=("zzz",), seed=7)
    sampling = replace(sampling, presence_penalty=0.5, frequency_penalty=-0.5)
    extra = {
        "user": "u-1",
        "metadata": {"team": "a"},
        "logit_bias": {"50256": -100},
        "provider": {"order": ["x"]},  # OpenRouter's, not on openai's pass-through list
        "tool_choice": None,  # sent as null by the client: means "not given"
        "model": "hijack",  # our own fields cannot be overridden from extra
        "stream": False,
    }
    collect(backend_for(fake).stream(job(sampling=sampling, extra=extra)))
    body = chat_requests(fake)[0].body
    assert body["max_completion_tokens"] == 40 and "max_tokens" not in body  # openai's field
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.3, 0.9, 7)
    assert body["stop"] == ["zzz"]
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.5, -0.5)
    assert body["user"] == "u-1" and body["logit_bias"] == {"50256": -100}
    assert "metadata" not in body and "provider" not in body  # dropped: not on the list
    assert "tool_choice" not in body
    assert body["model"] == "gpt-4o-mini" and body["stream"] is True


def test_max_tokens_field_comes_from_providers_json(fake: OpenAIFake) -> None:
    chunks, done = collect(
        backend_for(fake).stream(
            job("one two three four", backend="grok", sampling=Sampling(max_tokens=2))
        )
    )
    body = chat_requests(fake)[0].body
    assert body["max_tokens"] == 2 and "max_completion_tokens" not in body
    assert text(chunks) == "Hello! You " and done.finish_reason == "length"
    assert done.usage.completion_tokens == 2


def test_openrouter_sends_its_static_headers_but_not_forwarded_ones(fake: OpenAIFake) -> None:
    collect(backend_for(fake).stream(job(backend="openrouter", headers={"x-trace": "t1"})))
    headers = chat_requests(fake)[0].headers
    assert headers["http-referer"] == "https://github.com/inference-router/inference-router"
    assert headers["x-title"] == "inference-router"
    assert "x-trace" not in headers  # only backends that ask for it forward request headers
    assert fake.bearer_only(KEY)


def test_an_operator_added_backend_uses_its_own_prefix(fake: OpenAIFake) -> None:
    chunks, done = collect(backend_for(fake).stream(job(backend="acme")))
    assert text(chunks).startswith("Hello!") and done.finish_reason == "stop"


def test_tool_calls_round_trip(fake: OpenAIFake) -> None:
    backend = backend_for(fake)
    chunks, done = collect(
        backend.stream(job("Weather and time?", extra={"tools": [WEATHER, TIME]}))
    )
    assert done.finish_reason == "tool_calls" and not text(chunks)
    fragments = [tc for c in chunks for tc in c.tool_calls or []]
    assert fragments[0] == {
        "index": 0,
        "id": "call_0get_weather",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert all(
        set(f) == {"index", "function"} and set(f["function"]) == {"arguments"}
        for f in fragments
        if "id" not in f
    )
    calls: dict[int, dict[str, Any]] = {}
    for f in fragments:
        call = calls.setdefault(f["index"], {"id": f.get("id"), "name": "", "arguments": ""})
        call["name"] += f["function"].get("name", "")
        call["arguments"] += f["function"]["arguments"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "n": 0}
    assert calls[1]["name"] == "get_time" and json.loads(calls[1]["arguments"])["n"] == 1
    assert done.usage.completion_tokens == fake.usages[0]["completion_tokens"] > 0

    made = [{"id": c.pop("id"), "type": "function", "function": c} for c in calls.values()]
    history = [
        {"role": "user", "content": "Weather and time?"},
        {"role": "assistant", "content": None, "tool_calls": made},
        {"role": "tool", "tool_call_id": "call_0get_weather", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_1get_time", "content": "noon"},
    ]
    chunks, done = collect(backend.stream(job(messages=history, extra={"tools": [WEATHER, TIME]})))
    assert text(chunks) == "The tool call_1get_time said: noon" and done.finish_reason == "stop"
    sent = chat_requests(fake)[1].body
    assert sent["messages"] == history and sent["tools"] == [WEATHER, TIME]


def test_parallel_tool_calls_false_is_passed_on(fake: OpenAIFake) -> None:
    extra = {"tools": [WEATHER, TIME], "parallel_tool_calls": False, "tool_choice": "auto"}
    chunks, _ = collect(backend_for(fake).stream(job(extra=extra)))
    assert {tc["index"] for c in chunks for tc in c.tool_calls or []} == {0}
    body = chat_requests(fake)[0].body
    assert body["parallel_tool_calls"] is False and body["tool_choice"] == "auto"


def test_json_mode(fake: OpenAIFake) -> None:
    backend = backend_for(fake)
    chunks, _ = collect(backend.stream(job(extra={"response_format": {"type": "json_object"}})))
    assert json.loads(text(chunks)) == {"answer": "Paris"}
    props = {"city": {"type": "string"}, "pop": {"type": "integer"}}
    spec = {"name": "city", "strict": True, "schema": {"type": "object", "properties": props}}
    schema = {"type": "json_schema", "json_schema": spec}
    chunks, _ = collect(backend.stream(job(extra={"response_format": schema})))
    assert json.loads(text(chunks)) == {"city": "Paris", "pop": 42}
    assert chat_requests(fake)[1].body["response_format"] == schema


def test_logprobs_travel_with_their_text(fake: OpenAIFake) -> None:
    chunks, _ = collect(backend_for(fake).stream(job(extra={"logprobs": True, "top_logprobs": 2})))
    for chunk in chunks:
        (entry,) = chunk.logprobs or []
        assert entry["token"] == chunk.delta and entry["logprob"] == -0.25
        assert entry["bytes"] == list(chunk.delta.encode())
        assert [t["token"] for t in entry["top_logprobs"]] == [chunk.delta + "0", chunk.delta + "1"]


def test_a_safety_block_ends_with_content_filter(fake: OpenAIFake) -> None:
    chunks, done = collect(backend_for(fake).stream(job(f"please {api.BLOCK}")))
    assert chunks == [] and done.finish_reason == "content_filter"


def test_an_upstream_without_usage_gives_zeros_and_logs_once(
    fake: OpenAIFake, caplog: pytest.LogCaptureFixture
) -> None:
    backend = backend_for(fake)
    with caplog.at_level(logging.INFO, logger="workers.openai_compat"):
        for _ in range(2):
            chunks, done = collect(backend.stream(job(api.NO_USAGE)))
            assert done == Done("stop", Usage(0, 0)) and text(chunks)
    assert len([r for r in caplog.records if "no usage" in r.getMessage()]) == 1


# -- errors ----------------------------------------------------------------------------
#: (upstream status, OpenAI error type, the errors.RouterError class, the status the client sees)
STATUS_CASES = [
    (400, "invalid_request_error", errors.InvalidRequestError, 400),
    (403, "permission_error", errors.PermissionDeniedError, 403),
    (413, "invalid_request_error", errors.RequestTooLargeError, 413),
    (422, "invalid_request_error", errors.UnprocessableError, 422),
    (500, "server_error", errors.UpstreamError, 502),
    (503, "server_error", errors.ServiceUnavailableError, 503),
]


@pytest.mark.parametrize(("upstream", "type_", "cls", "status"), STATUS_CASES)
def test_status_errors_map_to_router_errors(
    fake: OpenAIFake, upstream: int, type_: str, cls: type[errors.RouterError], status: int
) -> None:
    said = f"Upstream says no ({upstream})."
    fake.fail_next(openai_error(upstream, said, type_, code="some_code", param="temperature"))
    with pytest.raises(cls) as info:
        list(backend_for(fake).stream(job()))
    err = info.value
    assert type(err) is cls and err.status_code == status
    assert err.message == f"`openai` upstream answered HTTP {upstream} ({type_}): {said}"
    assert (err.param, err.code) == ("temperature", "some_code")


def test_a_non_json_error_page_is_relayed_as_text(fake: OpenAIFake) -> None:
    fake.fail_next(Reply(502, "<html>bad gateway</html>", content_type="text/html"))
    with pytest.raises(errors.UpstreamError) as info:
        list(backend_for(fake).stream(job()))
    assert info.value.status_code == 502 and "bad gateway" in info.value.message


def test_the_upstreams_code_and_param_are_kept(fake: OpenAIFake) -> None:
    with pytest.raises(errors.InvalidRequestError) as info:
        list(backend_for(fake).stream(job("a " * 40, upstream_model="tiny-ctx")))
    assert (info.value.code, info.value.param) == ("context_length_exceeded", "messages")
    assert "maximum context length is 16 tokens" in info.value.message
    with pytest.raises(errors.NotFoundError) as missing:
        list(backend_for(fake).stream(job(upstream_model="gpt-9")))
    assert missing.value.status_code == 404 and missing.value.code == "model_not_found"
    assert "gpt-9" in missing.value.message


def test_wrong_key_is_401_and_the_echoed_key_is_scrubbed(fake: OpenAIFake) -> None:
    wrong = "sk-WRONG-planted-secret-9876543210"
    with pytest.raises(errors.AuthenticationError) as info:
        list(backend_for(fake, **{KEY_ENV: wrong}).stream(job()))
    err = info.value
    assert err.status_code == 401 and "Incorrect API key provided: ***" in err.message
    assert wrong not in err.message and wrong[:12] not in err.message
    # nothing unscrubbed rides along in a logged traceback either
    assert wrong not in str(err) and err.__cause__ is None and err.__suppress_context__


def test_a_key_echoed_in_any_upstream_error_is_scrubbed(fake: OpenAIFake) -> None:
    fake.fail_next(openai_error(500, f"upstream blew up handling key {KEY}", type_="server_error"))
    with pytest.raises(errors.UpstreamError) as info:
        list(backend_for(fake).stream(job()))
    assert KEY not in info.value.message and KEY[:16] not in info.value.message
    assert "key ***" in info.value.message


def test_429_carries_retry_after(fake: OpenAIFake) -> None:
    limited = {"Retry-After": "7"}
    fake.fail_next(openai_error(429, "Rate limit reached.", "requests", headers=limited))
    with pytest.raises(errors.RateLimitError) as info:
        list(backend_for(fake).stream(job()))
    assert info.value.status_code == 429 and info.value.retry_after == 7.0
    assert "Rate limit reached." in info.value.message


def test_a_read_timeout_is_504(fake: OpenAIFake) -> None:
    fake.fail_next(Reply(200, {}, delay=1.5))
    started = time.monotonic()
    with pytest.raises(errors.GatewayTimeoutError) as info:
        list(backend_for(fake, OPENAI_TIMEOUT="0.3").stream(job()))
    assert time.monotonic() - started < 1.2
    assert info.value.status_code == 504 and "read timeout 0.3s" in info.value.message


def test_connection_refused_is_502_unreachable(fake: OpenAIFake) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = backend_for(fake, OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(errors.UpstreamError) as info:
        list(backend.stream(job()))
    assert info.value.status_code == 502 and info.value.code == "upstream_unreachable"
    assert "`openai` upstream is unreachable" in info.value.message


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"modalities": ["text", "audio"]}, "modalities"),
    ],
)
def test_requests_we_cannot_relay_fail_before_any_http_call(
    fake: OpenAIFake, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(errors.InvalidRequestError) as info:
        list(backend_for(fake).stream(job(extra=extra)))
    assert info.value.param == param and "`openai`" in info.value.message
    assert fake.requests == []


def test_a_missing_key_fails_before_any_http_call(fake: OpenAIFake) -> None:
    env = env_for(fake)
    del env[KEY_ENV]
    with pytest.raises(errors.AuthenticationError) as info:
        list(OpenAICompatBackend.from_env(env).stream(job()))
    assert info.value.code == "missing_api_key" and fake.requests == []


# -- retries ---------------------------------------------------------------------------
def overloaded() -> Reply:
    return openai_error(503, "The engine is currently overloaded.", type_="server_error")


def test_retried_after_two_503s_then_answers(fake: OpenAIFake) -> None:
    fake.fail_next(overloaded(), overloaded())
    chunks, done = collect(backend_for(fake, ROUTER_UPSTREAM_RETRIES="2").stream(job()))
    assert text(chunks).startswith("Hello!") and done.finish_reason == "stop"
    assert len(chat_requests(fake)) == 3


def test_retries_exhausted_raise_the_last_error(fake: OpenAIFake) -> None:
    fake.fail_next(overloaded(), overloaded(), overloaded())
    with pytest.raises(errors.ServiceUnavailableError):
        list(backend_for(fake, ROUTER_UPSTREAM_RETRIES="2").stream(job()))
    assert len(chat_requests(fake)) == 3


def test_a_400_is_not_retried(fake: OpenAIFake) -> None:
    fake.fail_next(openai_error(400, "bad"))
    with pytest.raises(errors.InvalidRequestError):
        list(backend_for(fake, ROUTER_UPSTREAM_RETRIES="2").stream(job()))
    assert len(chat_requests(fake)) == 1


def test_429_retry_after_is_respected(fake: OpenAIFake) -> None:
    fake.fail_next(
        openai_error(429, "Slow down.", type_="requests", headers={"Retry-After": "0.4"})
    )
    started = time.monotonic()
    chunks, _ = collect(backend_for(fake, ROUTER_UPSTREAM_RETRIES="2").stream(job()))
    waited = time.monotonic() - started
    assert 0.4 <= waited < 2.0 and text(chunks)
    assert len(chat_requests(fake)) == 2


def test_a_retry_after_beyond_the_cap_is_not_waited_for(fake: OpenAIFake) -> None:
    fake.fail_next(openai_error(429, "Quota.", type_="requests", headers={"Retry-After": "60"}))
    backend = backend_for(fake, ROUTER_UPSTREAM_RETRIES="2", ROUTER_UPSTREAM_MAX_RETRY_AFTER="1")
    with pytest.raises(errors.RateLimitError) as info:
        list(backend.stream(job()))
    assert info.value.retry_after == 60.0 and len(chat_requests(fake)) == 1


def test_an_in_stream_error_before_any_content_is_mapped_and_retried(fake: OpenAIFake) -> None:
    # vLLM's shape: the HTTP status repeated as a numeric code inside a 200 stream
    vllm_503 = {"error": {"message": "engine dead", "type": "ServiceUnavailable", "code": 503}}
    vllm_400 = {"error": {"message": "bad grammar", "type": "BadRequestError", "code": 400}}
    stream = "text/event-stream"
    fake.fail_next(
        Reply(chunks=sse([vllm_503]), content_type=stream),
        Reply(chunks=sse([vllm_400]), content_type=stream),
    )
    with pytest.raises(errors.InvalidRequestError) as info:
        list(backend_for(fake, ROUTER_UPSTREAM_RETRIES="2").stream(job()))
    assert "bad grammar" in info.value.message and info.value.code is None
    assert len(chat_requests(fake)) == 2  # the 503 was retried, the 400 was not


# -- mid-stream failures and cancellation ------------------------------------------------
def consume_until_error(items: Iterator[Chunk | Done]) -> tuple[list[Chunk], errors.RouterError]:
    chunks: list[Chunk] = []
    with pytest.raises(errors.RouterError) as info:
        for item in items:
            assert isinstance(item, Chunk), "no Done after a failure"
            chunks.append(item)
    return chunks, info.value


def test_a_stream_dying_midway_is_not_retried(fake: OpenAIFake) -> None:
    stream = backend_for(fake, ROUTER_UPSTREAM_RETRIES="2").stream(job(api.DIE))
    chunks, err = consume_until_error(stream)
    assert [c.delta for c in chunks] == ["Hello! ", "You "]
    assert isinstance(err, errors.UpstreamError) and err.code == "upstream_disconnected"
    assert "dropped the connection" in err.message and len(chat_requests(fake)) == 1


def test_an_error_event_midway_is_a_502(fake: OpenAIFake) -> None:
    chunks, err = consume_until_error(
        backend_for(fake, ROUTER_UPSTREAM_RETRIES="2").stream(job(api.STREAM_ERROR))
    )
    assert len(chunks) == 2 and type(err) is errors.UpstreamError and err.status_code == 502
    said = "reported an error in its stream (server_error): The server had an error"
    assert said in err.message
    assert len(chat_requests(fake)) == 1


def test_a_truncated_stream_is_an_error_not_a_short_answer(fake: OpenAIFake) -> None:
    chunks, err = consume_until_error(backend_for(fake).stream(job(api.TRUNCATE)))
    assert len(chunks) == 2 and err.code == "upstream_truncated" and err.status_code == 502


def test_closing_the_iterator_closes_the_upstream_response(fake: OpenAIFake) -> None:
    stream = backend_for(fake).stream(job(api.SLOW))
    for _ in range(3):
        assert isinstance(next(stream), Chunk)
    stream.close()  # type: ignore[attr-defined]
    assert fake.stream_closed.wait(3), "the fake kept streaming to a closed request"
    assert fake.slow_served < 100


def test_one_client_per_endpoint_shared_by_threads(fake: OpenAIFake) -> None:
    backend = backend_for(fake)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: text(collect(backend.stream(job()))[0]), range(6)))
    assert results == ["Hello! You said: What is up?"] * 6
    collect(backend.stream(job(backend="openrouter")))  # other static headers: its own client
    assert len(backend._clients) == 2


def test_the_fake_also_answers_plain_sdk_calls(fake: OpenAIFake) -> None:
    """Other suites use the fake directly: non-streaming bodies and the model list."""
    client = OpenAI(base_url=fake.url + "/v1", api_key=KEY, max_retries=0)
    hi: Any = [{"role": "user", "content": "Hi"}]
    tools: Any = [WEATHER]
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=hi, tools=tools)
    choice = reply.choices[0]
    (call,) = choice.message.tool_calls or []
    assert choice.finish_reason == "tool_calls" and "get_weather" in call.model_dump_json()
    assert reply.usage is not None and reply.usage.prompt_tokens == 4
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=hi, logprobs=True)
    choice = reply.choices[0]
    assert choice.message.content == "Hello! You said: Hi" and choice.logprobs is not None
    assert [e.token for e in choice.logprobs.content or []] == words("Hello! You said: Hi")
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini", "tiny-ctx"]
