"""The anthropic backend against a fake Messages API through the real `anthropic` SDK
(ANTHROPIC_BASE_URL): streams, tools, JSON modes, every error class, retries before the
first chunk only, cancellation, key scrubbing; then the request translation on its own."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fakes import anthropic_api as api
from tests.fakes.server import FakeServer, Reply
from workers import errors
from workers.anthropic import AnthropicBackend
from workers.anthropic_translate import JSON_INSTRUCTION, build_request
from workers.errors import InvalidRequestError, RouterError, UpstreamError
from workers.protocol import ChatJob, Chunk, Done, Sampling
from workers.providers import endpoint

KEY = "sk-ant-api03-test-0123456789abcdefghijklmnop"
SSE = "text/event-stream; charset=utf-8"
FRAMES = api.answer_frames("one two three four")  # start, block start, ping, 4 deltas, ...
OVERLOADED = api.error_event("overloaded_error", "Overloaded")  # an SSE `error` event
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "parameters": CITY, "description": "Weather in a city."}}  # fmt: skip
ZONE = {"type": "object", "properties": {"zone": {"type": "string"}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": ZONE}}


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def tool_call(call_id: str, name: str, arguments: str = "{}") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def calling(*calls: dict[str, Any], content: str | None = None) -> dict[str, Any]:
    """An OpenAI assistant message that calls tools."""
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    server = api.start_anthropic_fake()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _clean(fake: FakeServer) -> None:
    fake.reset()


def env_for(fake: FakeServer, **overrides: str) -> dict[str, str]:
    """A worker environment: the fake as upstream, two quick retries."""
    return {"ANTHROPIC_BASE_URL": fake.url, "TEST_ANTHROPIC_KEY": KEY,
            "ROUTER_KEY_ENV_ALLOWLIST": "TEST_ANTHROPIC_KEY",
            "ROUTER_UPSTREAM_RETRIES": "2", "ROUTER_UPSTREAM_BACKOFF": "0.01",
            "ROUTER_UPSTREAM_BACKOFF_MAX": "0.02", **overrides}  # fmt: skip


def backend(fake: FakeServer, **overrides: str) -> AnthropicBackend:
    return AnthropicBackend.from_env(env_for(fake, **overrides))


def job(messages: list[dict[str, Any]] | str = "Hi there", *, model: str = "claude-test",
        sampling: Sampling | None = None, **extra: Any) -> ChatJob:  # fmt: skip
    """A chat job for the `anthropic` backend (one user turn when `messages` is a str)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return ChatJob(id="job_1", model="claude", backend="anthropic", kind="anthropic",
                   upstream_model=model, messages=messages, sampling=sampling or Sampling(),
                   extra=extra, api_key_env="TEST_ANTHROPIC_KEY")  # fmt: skip


@dataclass
class Result:
    chunks: list[Chunk]
    done: Done

    def __post_init__(self) -> None:
        self.text = "".join(c.delta for c in self.chunks)
        self.fragments = [tc for c in self.chunks for tc in c.tool_calls or []]

    def calls(self) -> list[dict[str, Any]]:
        """Tool calls assembled from their fragments, as an OpenAI client would."""
        calls: dict[int, dict[str, Any]] = {}
        for tc in self.fragments:
            call = calls.setdefault(tc["index"], {"id": None, "name": None, "arguments": ""})
            call["id"] = tc.get("id") or call["id"]
            call["name"] = tc.get("function", {}).get("name") or call["name"]
            call["arguments"] += tc["function"]["arguments"]
        return [calls[i] for i in sorted(calls)]


def consume(items: Iterator[Chunk | Done], got: list[Chunk] | None = None) -> Result:
    """Drain a stream, checking the contract: non-empty Chunks, then exactly one Done."""
    chunks = got if got is not None else []
    done = None
    for item in items:
        assert done is None, "nothing may follow Done"
        if isinstance(item, Done):
            done = item
        else:
            assert isinstance(item, Chunk) and item, f"empty or foreign item {item!r}"
            chunks.append(item)
    assert done is not None, "the stream must end with Done"
    return Result(chunks, done)


def run(fake: FakeServer, j: ChatJob, **overrides: str) -> Result:
    return consume(backend(fake, **overrides).stream(j))


def failure(fake: FakeServer, j: ChatJob, **overrides: str) -> tuple[RouterError, list[Chunk]]:
    """The RouterError a stream ends with, and the chunks that came before it."""
    got: list[Chunk] = []
    with pytest.raises(RouterError) as info:
        consume(backend(fake, **overrides).stream(j), got)
    return info.value, got


# -- streams ----------------------------------------------------------------------------
def test_text_stream_ends_with_done_and_the_upstreams_exact_usage(fake: FakeServer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    result = run(fake, job(messages, sampling=Sampling(temperature=0.5, top_p=0.9)))
    assert result.text == "Hello! You said: Hi there"
    assert len(result.chunks) == 5  # one per upstream delta: it streamed, not buffered
    (req,) = fake.requests
    assert result.done.finish_reason == "stop"
    assert result.done.usage.prompt_tokens == api.count_input(req.body)
    assert result.done.usage.completion_tokens == 5
    assert req.path == "/v1/messages" and req.body["stream"] is True
    assert req.body["system"] == "Be brief."
    assert req.body["messages"] == [{"role": "user", "content": [text("Hi there")]}]
    assert req.body["max_tokens"] == 4096 and req.body["model"] == "claude-test"
    assert (req.body["temperature"], req.body["top_p"]) == (0.5, 0.9)


def test_the_key_travels_only_in_the_auth_header(fake: FakeServer) -> None:
    run(fake, job(), ANTHROPIC_HEADERS='{"anthropic-beta": "test-beta-1"}')
    (req,) = fake.requests
    assert req.headers["authorization"] == f"Bearer {KEY}"  # SDK 2.x sends api_key as Bearer
    assert req.headers["anthropic-version"] and req.headers["anthropic-beta"] == "test-beta-1"
    assert KEY not in json.dumps(req.body) and KEY[:16] not in json.dumps(req.body)


def test_cache_tokens_count_as_prompt_tokens(fake: FakeServer) -> None:
    result = run(fake, job("Answer from the CACHED context"))
    cached = api.CACHE_CREATION + api.CACHE_READ
    assert result.done.usage.prompt_tokens == api.count_input(fake.requests[0].body) + cached


@pytest.mark.parametrize(
    ("content", "sampling", "finish", "text"),
    [
        ("Say FORBIDDEN things", Sampling(), "content_filter", "I can't help with that."),
        ("one two three four", Sampling(max_tokens=3), "length", "Hello! You said: "),
        ("alpha beta gamma", Sampling(stop=("beta",)), "stop", "Hello! You said: alpha "),
    ],
)
def test_stop_reasons_map_to_openai_finish_reasons(
    fake: FakeServer, content: str, sampling: Sampling, finish: str, text: str
) -> None:
    result = run(fake, job(content, sampling=sampling))
    assert (result.done.finish_reason, result.text) == (finish, text)
    if sampling.max_tokens:
        assert result.done.usage.completion_tokens == 3
    if sampling.stop:
        assert fake.requests[0].body["stop_sequences"] == ["beta"]


# -- tools ------------------------------------------------------------------------------
def test_tool_call_round_trip(fake: FakeServer) -> None:
    ask = {"role": "user", "content": "What is the weather in Paris?"}
    first = run(fake, job([ask], tools=[WEATHER], tool_choice="required"))
    assert first.text == "Let me check."
    assert first.done.finish_reason == "tool_calls"
    head, *rest = first.fragments
    assert head == {"index": 0, **tool_call(head["id"], "get_weather", "")}
    assert head["id"].startswith("toolu_") and rest
    assert all(set(f) == {"index", "function"} and f["index"] == 0 for f in rest)
    (call,) = first.calls()
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    sent = fake.requests[0].body
    weather = WEATHER["function"]
    assert sent["tools"] == [{"name": "get_weather", "description": weather["description"],
                              "input_schema": weather["parameters"]}]  # fmt: skip
    assert sent["tool_choice"] == {"type": "any"}

    assistant = calling(tool_call(call["id"], "get_weather", call["arguments"]))
    result = {"role": "tool", "tool_call_id": call["id"], "content": "22 degrees and sunny"}
    second = run(fake, job([ask, assistant, result], tools=[WEATHER]))
    assert second.text == "The tool said: 22 degrees and sunny."
    assert second.done.finish_reason == "stop" and not second.fragments
    use = {"type": "tool_use", "id": call["id"], "name": "get_weather", "input": {"city": "Paris"}}
    answer = {"type": "tool_result", "tool_use_id": call["id"], "content": "22 degrees and sunny"}
    assert fake.requests[1].body["messages"] == [
        {"role": "user", "content": [text("What is the weather in Paris?")]},
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [answer]},
    ]


def test_parallel_tool_calls_are_numbered_among_tool_calls(fake: FakeServer) -> None:
    result = run(fake, job("get_weather and get_time please", tools=[WEATHER, TIME]))
    calls = result.calls()
    assert [c["name"] for c in calls] == ["get_weather", "get_time"]  # blocks 1 and 2 upstream
    assert len({c["id"] for c in calls}) == 2
    assert [json.loads(c["arguments"]) for c in calls] == [{"city": "Paris"}, {"zone": "Paris"}]
    assert "tool_choice" not in fake.requests[0].body

    serial = job("get_weather and get_time", tools=[WEATHER, TIME], parallel_tool_calls=False)
    assert [c["name"] for c in run(fake, serial).calls()] == ["get_weather"]
    serial_choice = {"type": "auto", "disable_parallel_tool_use": True}
    assert fake.requests[1].body["tool_choice"] == serial_choice


def test_consecutive_tool_results_share_one_user_turn(fake: FakeServer) -> None:
    messages = [
        {"role": "user", "content": "both"},
        calling(tool_call("toolu_a", "a"), tool_call("toolu_b", "b"), content="Checking both."),
        {"role": "tool", "tool_call_id": "toolu_a", "content": "A"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": [text("B")]},
        {"role": "user", "content": "Summarise."},
    ]
    result = run(fake, job(messages))
    assert result.text == "The tool said: A; B."
    turns = fake.requests[0].body["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert [b["type"] for b in turns[1]["content"]] == ["text", "tool_use", "tool_use"]
    assert [b["type"] for b in turns[2]["content"]] == ["tool_result", "tool_result", "text"]


# -- JSON modes -------------------------------------------------------------------------
def test_json_object_asks_for_json_in_the_system_prompt(fake: FakeServer) -> None:
    terse = {"role": "developer", "content": "You are terse."}
    messages = [terse, {"role": "user", "content": "capital of France"}]
    result = run(fake, job(messages, response_format={"type": "json_object"}))
    assert json.loads(result.text) == {"answer": "capital of France"}
    assert fake.requests[0].body["system"] == f"You are terse.\n\n{JSON_INSTRUCTION}"
    assert api.JSON_OBJECT_HINT in JSON_INSTRUCTION


def test_json_schema_streams_the_forced_tools_input_as_text(fake: FakeServer) -> None:
    props = {"city": {"type": "string"}, "celsius": {"type": "number"}}
    schema = {"type": "object", "properties": props}
    fmt = {"type": "json_schema", "json_schema": {"name": "weather_report", "schema": schema}}
    result = run(fake, job("weather in Paris", response_format=fmt))
    assert json.loads(result.text) == {"city": "Paris", "celsius": 2.5}
    assert len(result.chunks) > 1 and not result.fragments
    assert result.done.finish_reason == "stop"
    sent = fake.requests[0].body
    assert sent["tool_choice"] == {"type": "tool", "name": "weather_report"}
    assert sent["tools"][0]["input_schema"] == schema


# -- errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "kind", "expected", "client_status"),
    [
        (400, "invalid_request_error", InvalidRequestError, 400),
        (401, "authentication_error", errors.AuthenticationError, 401),
        (403, "permission_error", errors.PermissionDeniedError, 403),
        (404, "not_found_error", errors.NotFoundError, 404),
        (413, "request_too_large", errors.RequestTooLargeError, 413),
        (429, "rate_limit_error", errors.RateLimitError, 429),
        (500, "api_error", UpstreamError, 502),
        (503, "api_error", errors.ServiceUnavailableError, 503),
        (504, "timeout_error", errors.GatewayTimeoutError, 504),
        (529, "overloaded_error", errors.ServiceUnavailableError, 503),
    ],
)
def test_upstream_statuses_map_to_router_errors(
    fake: FakeServer, status: int, kind: str, expected: type[RouterError], client_status: int
) -> None:
    fake.fail_next(api.error_reply(status, kind, f"upstream says {status}", {"retry-after": "7"}))
    err, got = failure(fake, job(), ROUTER_UPSTREAM_RETRIES="0")
    assert type(err) is expected and err.status_code == client_status and not got
    assert "anthropic" in err.message and f"upstream says {status}" in err.message
    assert err.retry_after == 7  # Retry-After is relayed (the client sees it on 429 and 503)
    assert len(fake.requests) == 1


def test_read_timeout_is_a_504(fake: FakeServer) -> None:
    fake.fail_next(Reply(body={}, delay=0.6))
    started = time.monotonic()
    err, _ = failure(fake, job(), ROUTER_UPSTREAM_RETRIES="0", ANTHROPIC_TIMEOUT="0.2")
    assert isinstance(err, errors.GatewayTimeoutError) and err.status_code == 504
    assert time.monotonic() - started < 0.5
    time.sleep(0.5)  # the fake's late answer then fails inside this test, not the next


def test_connection_refused_is_upstream_unreachable(fake: FakeServer) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    err, _ = failure(fake, job(), ANTHROPIC_BASE_URL=url, ROUTER_UPSTREAM_RETRIES="0")
    assert isinstance(err, UpstreamError) and err.code == "upstream_unreachable"
    assert err.status_code == 502


def test_a_key_echoed_by_the_upstream_is_scrubbed(fake: FakeServer) -> None:
    planted = f"{api.REVOKED_PREFIX}-0123456789abcdefghijklmnop"
    err, _ = failure(fake, job(), TEST_ANTHROPIC_KEY=planted)
    assert isinstance(err, errors.AuthenticationError)
    assert "invalid x-api-key: ***" in err.message  # the fake did echo it
    assert planted not in err.message and planted[: len(planted) // 2] not in err.message
    assert len(fake.requests) == 1  # 401 is not retried


def test_an_unknown_model_is_the_upstreams_404(fake: FakeServer) -> None:
    err, _ = failure(fake, job(model="claude-missing-9"))
    assert isinstance(err, errors.NotFoundError) and "model: claude-missing-9" in err.message


# -- retries ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "failures",
    [
        [api.error_reply(503, "api_error", "busy"), api.error_reply(529, "overloaded_error", "")],
        [Reply(chunks=[*FRAMES[:3], OVERLOADED], content_type=SSE)],  # before any content
    ],
)
def test_retries_then_succeeds(fake: FakeServer, failures: list[Reply]) -> None:
    fake.fail_next(*failures)
    assert run(fake, job()).text == "Hello! You said: Hi there"
    assert len(fake.requests) == len(failures) + 1


def test_retries_exhausted_raise_the_last_error(fake: FakeServer) -> None:
    fake.fail_next(*[api.error_reply(529, "overloaded_error", "Overloaded")] * 3)
    err, _ = failure(fake, job())
    assert isinstance(err, errors.ServiceUnavailableError) and "Overloaded" in err.message
    assert len(fake.requests) == 3


def test_retry_after_is_respected(fake: FakeServer) -> None:
    fake.fail_next(api.error_reply(429, "rate_limit_error", "slow down", {"retry-after": "1"}))
    started = time.monotonic()
    run(fake, job())
    assert time.monotonic() - started >= 1.0  # backoff alone would wait <= 0.02 s
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    ("chunks", "abort_after", "expected", "says"),
    [
        (FRAMES, 6, UpstreamError, "dropped the connection"),  # the connection dies
        ([*FRAMES[:6], OVERLOADED], None, errors.ServiceUnavailableError, "overloaded_error"),
        (FRAMES[:-1], None, UpstreamError, "before `message_stop`"),  # truncated
    ],
)
def test_no_retry_once_a_chunk_was_yielded(
    fake: FakeServer, chunks: list[bytes], abort_after: int | None, expected: type, says: str
) -> None:
    fake.fail_next(Reply(chunks=chunks, content_type=SSE, abort_after=abort_after))
    err, got = failure(fake, job())
    assert [c.delta for c in got][:3] == ["one ", "two ", "three "]
    assert type(err) is expected and says in err.message
    assert len(fake.requests) == 1


def test_closing_the_stream_closes_the_upstream_response(fake: FakeServer) -> None:
    frames = api.answer_frames(" ".join(f"w{i}" for i in range(200)))
    sent: list[int] = []
    fake.fail_next(Reply(chunks=api.paced(frames, 0.01, sent), content_type=SSE))
    stream: Any = backend(fake).stream(job())  # a generator: it has close()
    assert next(stream) == Chunk("w0 ") and next(stream) == Chunk("w1 ")
    stream.close()
    time.sleep(0.3)
    stopped_at = len(sent)
    time.sleep(0.3)
    assert len(sent) == stopped_at < 30, "the fake kept streaming to a closed client"


# -- translation and validation, before any HTTP call ------------------------------------
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}}


@pytest.mark.parametrize(
    ("sampling", "extra", "param"),
    [
        (Sampling(presence_penalty=0.5), {}, "presence_penalty"),
        (Sampling(frequency_penalty=-1.0), {}, "frequency_penalty"),
        (Sampling(), {"logprobs": True}, "logprobs"),
        (Sampling(), {"top_logprobs": 3}, "top_logprobs"),
        (Sampling(), {"logit_bias": {"50256": -100}}, "logit_bias"),
        (Sampling(), {"n": 2}, "n"),
        (Sampling(temperature=1.5), {}, "temperature"),
        (Sampling(), {"response_format": {"type": "xml"}}, "response_format.type"),
        (Sampling(), {"tool_choice": "required"}, "tool_choice"),  # without tools
        (Sampling(), {"tools": [WEATHER], "response_format": SCHEMA_FORMAT}, "response_format"),
    ],
)
def test_unsupported_requests_fail_before_any_http_call(
    fake: FakeServer, sampling: Sampling, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        backend(fake).stream(job(sampling=sampling, **extra))
    assert info.value.param == param and info.value.status_code == 400
    assert "anthropic backend" in info.value.message and param.split(".")[0] in info.value.message
    assert fake.requests == []


def params(j: ChatJob, env: dict[str, str] | None = None) -> dict[str, Any]:
    return build_request(j, env or {}).params


def test_sampling_user_and_max_tokens() -> None:
    noop = Sampling(presence_penalty=0, frequency_penalty=0.0, seed=42)  # seed: ignored
    p = params(job(sampling=noop, logprobs=False, n=1))
    assert not {"seed", "presence_penalty", "logprobs", "n"} & set(p) and "extra_body" not in p
    sampling = Sampling(temperature=0.7, top_p=0.9, stop=("END", "STOP"), max_tokens=77)
    p = params(job(sampling=sampling, user="user-42"))
    assert p["extra_body"] == {"temperature": 0.7, "top_p": 0.9}
    assert p["stop_sequences"] == ["END", "STOP"] and p["max_tokens"] == 77
    assert p["metadata"] == {"user_id": "user-42"}
    assert params(job(), {"ANTHROPIC_MAX_TOKENS": "512"})["max_tokens"] == 512
    assert params(job())["max_tokens"] == 4096


def test_system_hoisted_turns_merged_images_translated() -> None:
    png = "data:image/png;base64,iVBORw0KGgo="
    cat = "https://x.test/cat.jpg"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "One."},
        {"role": "user", "content": [text("Look:"), image(png)]},
        {"role": "developer", "content": [text("Two.")]},
        {"role": "user", "content": [image(cat)]},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Well?"},
        {"role": "assistant", "content": "A cat."},
    ]
    p = params(job(messages))
    assert p["system"] == "One.\n\nTwo."
    base64 = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    looked = [text("Look:"), {"type": "image", "source": base64},
              {"type": "image", "source": {"type": "url", "url": cat}}, text("Well?")]  # fmt: skip
    assert p["messages"] == [
        {"role": "user", "content": looked},
        {"role": "assistant", "content": [text("A cat.")]},
    ]


@pytest.mark.parametrize(
    ("message", "param"),
    [
        (calling(tool_call("t1", "f", "{oops")), "messages[1].tool_calls[0].function.arguments"),
        (calling(tool_call("t1", "f", "[1]")), "messages[1].tool_calls[0].function.arguments"),
        ({"role": "user", "content": [image("data:image/bmp;base64,Qk0=")]},
         "messages[1].content[0].image_url"),
        ({"role": "user", "content": [image("ftp://x.test/cat.png")]},
         "messages[1].content[0].image_url"),
        ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
         "messages[1].content[0].type"),
        ({"role": "tool", "content": "orphan"}, "messages[1].tool_call_id"),
        ({"role": "function", "content": "old"}, "messages[1].role"),
    ],
)  # fmt: skip
def test_untranslatable_messages_are_400s_naming_the_field(
    message: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        params(job([{"role": "user", "content": "hi"}, message]))
    assert info.value.param == param


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", {"type": "auto"}), ("none", {"type": "none"}), ("required", {"type": "any"}),
     ({"type": "function", "function": {"name": "get_weather"}},
      {"type": "tool", "name": "get_weather"})],
)  # fmt: skip
def test_tool_choice_mapping(choice: Any, expected: dict[str, Any]) -> None:
    assert params(job(tools=[WEATHER], tool_choice=choice))["tool_choice"] == expected


# -- the backend as a shared object -----------------------------------------------------
def test_clients_are_cached_per_endpoint_and_shared_by_threads(fake: FakeServer) -> None:
    b = backend(fake)
    ep = endpoint(job(), b.env)
    assert b.client(ep) is b.client(endpoint(job(), b.env))
    other = AnthropicBackend.from_env(env_for(fake, TEST_ANTHROPIC_KEY=KEY + "2"))
    assert other.client(endpoint(job(), other.env)) is not b.client(ep)
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda n: consume(b.stream(job(f"thread {n}"))).text, range(8)))
    assert texts == [f"Hello! You said: thread {n}" for n in range(8)]
    assert len(b._clients) == 1
