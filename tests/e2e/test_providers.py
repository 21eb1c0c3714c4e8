"""Every provider backend end to end: the real `openai` SDK against the API under gunicorn,
a gevent provider worker consuming all seven provider queues, and for each provider a
local fake of its HTTP API driven by the provider's real SDK inside the worker.

The API runs with the provider variables set to a placeholder (that is all it needs to
enable the backends); only the worker holds the keys. One key is planted and, at the end,
searched for in every log and every Redis value.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from tests.conftest import Stack, Worker, wait_until
from tests.fakes.anthropic_api import start_anthropic_fake
from tests.fakes.gemini_api import API_KEY as GEMINI_KEY
from tests.fakes.gemini_api import start_gemini_fake
from tests.fakes.openai_api import DIE, SLOW, OpenAIFake, prompt_tokens, start_openai_fake
from tests.fakes.server import FakeServer, Reply

SECRET = f"sk-planted-{uuid.uuid4().hex}"  # the OpenAI key; must never leave the worker
CLUSTER_MODEL = "meta-llama/Llama-3.1-8B-Instruct"

#: public model id -> the backend that serves it (one per provider, llm-d's discovered)
MODELS = {
    "gpt-4o-mini": "openai",
    "openrouter/openai/gpt-4o-mini": "openrouter",
    "grok-3-mini": "grok",
    "venice/llama-3.3-70b": "venice",
    "claude-haiku-4-5": "anthropic",
    "gemini-2.5-flash": "google",
    CLUSTER_MODEL: "llm-d",
}
FAMILIES = ["gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash", CLUSTER_MODEL]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@dataclass
class Providers:
    api: str
    client: openai.OpenAI
    fakes: dict[str, FakeServer]
    worker: Worker
    stack: Stack

    def fake(self, model: str) -> FakeServer:
        return self.fakes[MODELS[model]]


@pytest.fixture(scope="module")
def providers(
    stack: Stack, start_worker: Callable[..., Worker], start_api: Callable[..., str]
) -> Iterator[Providers]:
    fakes: dict[str, FakeServer] = {
        "openai": start_openai_fake(api_key=SECRET),
        "openrouter": start_openai_fake({"openai/gpt-4o-mini": None}),
        "grok": start_openai_fake({"grok-3-mini": None}),
        "venice": start_openai_fake({"llama-3.3-70b": None}),
        "anthropic": start_anthropic_fake(),
        "google": start_gemini_fake(),
        "llm-d": start_openai_fake({CLUSTER_MODEL: 131072}, vllm=True),
    }
    worker_env = {
        "OPENAI_API_KEY": SECRET,
        "OPENAI_BASE_URL": fakes["openai"].url + "/v1",
        "OPENROUTER_API_KEY": "or-key-0123456789",
        "OPENROUTER_BASE_URL": fakes["openrouter"].url + "/v1",
        "XAI_API_KEY": "xai-key-0123456789",
        "XAI_BASE_URL": fakes["grok"].url + "/v1",
        "XAI_TIMEOUT": "1",
        "VENICE_API_KEY": "venice-key-0123456789",
        "VENICE_BASE_URL": fakes["venice"].url + "/v1",
        "ANTHROPIC_API_KEY": "sk-ant-key-0123456789",
        "ANTHROPIC_BASE_URL": fakes["anthropic"].url,
        "GEMINI_API_KEY": GEMINI_KEY,
        "GEMINI_BASE_URL": fakes["google"].url,
        "LLMD_BASE_URL": fakes["llm-d"].url + "/v1",
        "LLMD_HEADERS": '{"x-llm-d-pool": "gpu-a"}',
        "LLMD_POLL_INTERVAL": "0.5",
        "ROUTER_UPSTREAM_RETRIES": "2",
        "ROUTER_UPSTREAM_BACKOFF": "0.01",
        "ROUTER_UPSTREAM_BACKOFF_MAX": "0.05",
    }
    queues = ",".join(dict.fromkeys(MODELS.values()))
    worker = start_worker(queues, concurrency=50, **worker_env)
    placeholders = {
        k: "set" for k in worker_env if k.endswith("_API_KEY") and k != "OPENAI_API_KEY"
    }
    api = start_api(
        "api-providers",
        DATABASE_URL=f"sqlite:///{stack.tmp / 'providers.db'}",
        ROUTER_REGISTRY_TTL="0.2",
        OPENAI_API_KEY="set-on-the-workers-only",
        LLMD_BASE_URL=fakes["llm-d"].url + "/v1",
        **placeholders,
    )
    client = openai.OpenAI(base_url=api + "/v1", api_key="none", max_retries=0, timeout=60)
    wait_until(lambda: _available(api, CLUSTER_MODEL), 30, "llm-d discovery", worker.log)
    yield Providers(api, client, fakes, worker, stack)
    worker.stop()  # later modules may serve these queues differently
    for fake in fakes.values():
        fake.stop()


def _available(api: str, model: str) -> bool:
    found = httpx.get(f"{api}/v1/models", timeout=5).json()["data"]
    return any(m["id"] == model and m["available"] for m in found)


@pytest.fixture(autouse=True)
def _fresh_fakes(providers: Providers) -> None:
    for fake in providers.fakes.values():
        fake.reset()


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_every_provider_is_listed_with_its_owner(providers: Providers) -> None:
    listed = {m.id: m for m in providers.client.models.list().data}
    for model, backend in MODELS.items():
        assert listed[model].owned_by == backend
        assert listed[model].model_extra["available"] is True
    assert listed[CLUSTER_MODEL].model_extra["context_window"] == 131072


@pytest.mark.parametrize("model", list(MODELS))
def test_non_stream_and_stream_agree(providers: Providers, model: str) -> None:
    c = providers.client
    resp = c.chat.completions.with_raw_response.create(model=model, messages=ask("ping pong"))
    assert resp.headers["x-router-backend"] == MODELS[model]
    body = resp.parse()
    assert "You said: ping pong" in body.choices[0].message.content
    assert body.choices[0].finish_reason == "stop" and body.model == model
    assert body.usage.prompt_tokens > 0 and body.usage.completion_tokens > 0

    chunks = list(
        c.chat.completions.create(
            model=model,
            messages=ask("ping pong"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == body.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].usage == body.usage  # the provider's own count, both ways
    if MODELS[model] in ("openai", "openrouter", "grok", "venice", "llm-d"):
        assert body.usage.prompt_tokens == prompt_tokens(ask("ping pong"))


@pytest.mark.parametrize("model", FAMILIES)
def test_tools_round_trip(providers: Providers, model: str) -> None:
    c = providers.client
    first = c.chat.completions.create(
        model=model, messages=ask("Weather in Paris?"), tools=[WEATHER_TOOL]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments), dict)

    streamed = list(
        c.chat.completions.create(
            model=model, messages=ask("Weather in Paris?"), tools=[WEATHER_TOOL], stream=True
        )
    )
    frags = [tc for ch in streamed for tc in (ch.choices[0].delta.tool_calls or [])]
    assert frags[0].id and frags[0].function.name == "get_weather"
    args = "".join(f.function.arguments or "" for f in frags if f.index == frags[0].index)
    assert isinstance(json.loads(args), dict)

    follow = [
        *ask("Weather in Paris?"),
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    for extra in choice.message.tool_calls[1:]:  # answer parallel calls too
        follow.append({"role": "tool", "tool_call_id": extra.id, "content": "{}"})
    second = c.chat.completions.create(model=model, messages=follow, tools=[WEATHER_TOOL])
    assert "21" in second.choices[0].message.content
    assert second.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", FAMILIES)
def test_json_mode(providers: Providers, model: str) -> None:
    resp = providers.client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Answer in JSON."}, *ask("Capital of France?")],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(resp.choices[0].message.content), dict)


def test_logprobs_pass_through(providers: Providers) -> None:
    resp = providers.client.chat.completions.create(
        model="gpt-4o-mini", messages=ask("hi"), logprobs=True, top_logprobs=2
    )
    entries = resp.choices[0].logprobs.content
    assert entries and "".join(e.token for e in entries) == resp.choices[0].message.content


def _openai_error(status: int, code: str | None = None, **headers: str) -> Reply:
    body = {
        "error": {"message": f"upstream says {status}", "type": "x", "param": None, "code": code}
    }
    return Reply(status, body, headers=headers)


@pytest.mark.parametrize(
    ("status", "client_status"),
    [
        (400, 400),
        (401, 401),
        (403, 403),
        (404, 404),
        (409, 409),
        (413, 413),
        (422, 422),
        (500, 502),
        (503, 503),
    ],
)
def test_upstream_errors_reach_the_client_mapped(
    providers: Providers, status: int, client_status: int
) -> None:
    fake = providers.fakes["venice"]
    fake.fail_next(*[_openai_error(status)] * 3)
    with pytest.raises(openai.APIStatusError) as err:
        providers.client.chat.completions.create(model="venice/llama-3.3-70b", messages=ask("x"))
    assert err.value.status_code == client_status
    assert f"upstream says {status}" in err.value.message
    assert len(fake.requests) == (3 if status >= 500 else 1)  # 5xx retried, 4xx not


def test_rate_limit_carries_retry_after_once_retries_are_spent(providers: Providers) -> None:
    fake = providers.fakes["venice"]
    fake.fail_next(*[_openai_error(429, "rate_limit_exceeded", **{"Retry-After": "0"})] * 3)
    with pytest.raises(openai.RateLimitError) as err:
        providers.client.chat.completions.create(model="venice/llama-3.3-70b", messages=ask("x"))
    assert "retry-after" in err.value.response.headers
    assert len(fake.requests) == 3


def test_retry_then_success_streams_normally(providers: Providers) -> None:
    fake = providers.fakes["venice"]
    fake.fail_next(_openai_error(503), _openai_error(500))
    stream = providers.client.chat.completions.create(
        model="venice/llama-3.3-70b", messages=ask("again"), stream=True
    )
    assert "You said: again" in "".join(ch.choices[0].delta.content or "" for ch in stream)
    assert len(fake.requests) == 3


def test_upstream_timeout_is_504(providers: Providers) -> None:
    fake = providers.fakes["grok"]  # XAI_TIMEOUT=1 on the worker
    fake.fail_next(*[Reply(200, {}, delay=2.0)] * 3)
    with pytest.raises(openai.APIStatusError) as err:
        providers.client.chat.completions.create(model="grok-3-mini", messages=ask("x"))
    assert err.value.status_code == 504


def test_upstream_dies_mid_stream(providers: Providers) -> None:
    c = providers.client
    resp = c.chat.completions.with_raw_response.create(
        model="grok-3-mini", messages=ask(f"please {DIE} now"), stream=True
    )
    job_id = resp.headers["x-router-job-id"]
    got = []
    with pytest.raises(openai.APIError) as err:
        for chunk in resp.parse():
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got)  # some text came first, then the error event
    assert "upstream" in str(err.value.message).lower()
    assert len(providers.fakes["grok"].requests) == 1  # never retried after a token
    job = httpx.get(f"{providers.api}/v1/jobs/{job_id}", timeout=5).json()
    assert job["status"] == "failed" and job["error"]["type"] == "server_error"


def test_client_disconnect_closes_the_upstream_stream(providers: Providers) -> None:
    fake = providers.fakes["openrouter"]
    assert isinstance(fake, OpenAIFake)
    stream = providers.client.chat.completions.create(
        model="openrouter/openai/gpt-4o-mini", messages=ask(SLOW), stream=True
    )
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()
    assert fake.stream_closed.wait(10), "the worker kept reading a cancelled upstream"
    assert fake.slow_served < 500


def test_provider_headers_and_forwarded_session_header(providers: Providers) -> None:
    c = providers.client
    c.chat.completions.create(model="openrouter/openai/gpt-4o-mini", messages=ask("hi"))
    sent = providers.fakes["openrouter"].requests[-1].headers
    assert sent["x-title"] == "inference-router" and "http-referer" in sent

    c.chat.completions.create(
        model=CLUSTER_MODEL, messages=ask("hi"), extra_headers={"x-session-token": "s-42"}
    )
    sent = [r for r in providers.fakes["llm-d"].requests if r.path.endswith("/completions")]
    assert sent[-1].headers["x-session-token"] == "s-42"
    assert sent[-1].headers["x-llm-d-pool"] == "gpu-a"


def test_cluster_down_makes_its_models_unavailable(providers: Providers) -> None:
    fake = providers.fakes["llm-d"]
    assert isinstance(fake, OpenAIFake)
    fake.health_status = 503
    try:
        wait_until(lambda: not _available(providers.api, CLUSTER_MODEL), 15, "model gone")
        time.sleep(1.5)  # each API process trusts a live worker it saw for up to 1 s
        with pytest.raises(openai.APIStatusError) as err:
            providers.client.chat.completions.create(model=CLUSTER_MODEL, messages=ask("x"))
        assert err.value.status_code in (404, 503)
    finally:
        fake.health_status = 200
        wait_until(lambda: _available(providers.api, CLUSTER_MODEL), 15, "model back")


def test_planted_key_never_leaves_the_worker(providers: Providers) -> None:
    """The key went to the upstream as a bearer only; an upstream that echoes it is
    scrubbed; and it is in no log and no Redis value."""
    c = providers.client
    c.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"))
    fake = providers.fakes["openai"]
    assert isinstance(fake, OpenAIFake) and fake.bearer_only(SECRET)

    echo = f"Incorrect API key provided: {SECRET}. Half of it: {SECRET[:24]}"
    fake.fail_next(
        Reply(
            401,
            {
                "error": {
                    "message": echo,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
        )
    )
    with pytest.raises(openai.AuthenticationError) as err:
        c.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"), stream=True)
    assert "Incorrect API key provided" in err.value.message
    assert SECRET[:16] not in json.dumps(err.value.body)

    time.sleep(0.5)  # let the logs flush
    for log in providers.stack.tmp.glob("*.log"):
        assert SECRET[:16] not in log.read_text(errors="replace"), log.name
    r = providers.stack.redis()
    for key in r.scan_iter("*"):
        kind = r.type(key)
        if kind == "hash":
            blob = json.dumps(r.hgetall(key))
        elif kind == "stream":
            blob = json.dumps(r.xrange(key))
        elif kind == "string":
            blob = str(r.get(key))
        elif kind == "list":
            blob = json.dumps(r.lrange(key, 0, -1))
        elif kind == "set":
            blob = json.dumps(sorted(r.smembers(key)))
        elif kind == "zset":
            blob = json.dumps(r.zrange(key, 0, -1))
        else:
            continue
        assert SECRET[:16] not in blob, key


def test_context_overflow_falls_back_to_a_larger_model(providers: Providers) -> None:
    from registry.crud import add_model, set_model
    from registry.db import make_engine

    engine = make_engine(f"sqlite:///{providers.stack.tmp / 'providers.db'}")
    add_model(
        engine, "tiny-ctx", backend="openai", upstream="tiny-ctx", context_window=16, max_tokens=8
    )
    set_model(engine, "tiny-ctx", fallbacks=["gpt-4o-mini"])
    wait_until(lambda: _available(providers.api, "tiny-ctx"), 10, "tiny-ctx listed")
    long_prompt = ask("word " * 40)
    raw = providers.client.chat.completions.with_raw_response.create(
        model="tiny-ctx", messages=long_prompt
    )
    assert raw.headers["x-router-model"] == "gpt-4o-mini"
    assert raw.parse().model == "gpt-4o-mini"
    paths = [r.body["model"] for r in providers.fakes["openai"].requests if r.body]
    assert paths == ["tiny-ctx", "gpt-4o-mini"]  # tried, refused for length, then the larger
    short = providers.client.chat.completions.create(model="tiny-ctx", messages=ask("hi"))
    assert short.model == "tiny-ctx"
