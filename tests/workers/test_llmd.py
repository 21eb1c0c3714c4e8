"""LlmdBackend against the fake OpenAI API in its vLLM flavour: discovery by polling, what
the heartbeat announces, optional key, forwarded and static headers, and streaming."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fakes.openai_api import OpenAIFake, start_openai_fake
from workers.errors import AuthenticationError, UpstreamError
from workers.llmd import LlmdBackend, health_url
from workers.protocol import ChatJob, Chunk, Done, Usage
from workers.providers import endpoint

MODELS: dict[str, int | None] = {"meta-llama/Llama-3.1-8B-Instruct": 8192, "tiny": None}
KEY = "llmd-secret-key-0123456789"


@pytest.fixture
def fake() -> Iterator[OpenAIFake]:
    server = start_openai_fake(MODELS, vllm=True)
    yield server
    server.stop()


@pytest.fixture
def backends() -> Iterator[list[LlmdBackend]]:
    """Backends made by a test; their pollers are stopped afterwards."""
    made: list[LlmdBackend] = []
    yield made
    for backend in made:
        backend.close()


def start(backends: list[LlmdBackend], base_url: str | None, **env: str) -> LlmdBackend:
    full = {"LLMD_POLL_INTERVAL": "0.05", "ROUTER_UPSTREAM_RETRIES": "0", **env}
    if base_url:
        full["LLMD_BASE_URL"] = base_url
    backend = LlmdBackend.from_env(full)
    backends.append(backend)
    return backend


def wait_for(check: Callable[[], bool], timeout: float = 3.0) -> None:
    give_up = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < give_up, "condition not reached in time"
        time.sleep(0.02)


def job(**kw: Any) -> ChatJob:
    fields: dict[str, Any] = {
        "id": "job_d",
        "model": "llama-8b",
        "backend": "llm-d",
        "kind": "llm-d",
        "upstream_model": "meta-llama/Llama-3.1-8B-Instruct",
        "messages": [{"role": "user", "content": "Hi llm-d"}],
        **kw,
    }
    return ChatJob(**fields)


def run(backend: LlmdBackend, j: ChatJob) -> tuple[str, Done]:
    items = list(backend.stream(j))
    assert all(isinstance(i, Chunk) and i for i in items[:-1]) and isinstance(items[-1], Done)
    return "".join(i.delta for i in items[:-1] if isinstance(i, Chunk)), items[-1]


def healthy(backend: LlmdBackend) -> bool:
    return backend.announce()["llmd_healthy"] == "1"


def test_health_url_sits_beside_v1() -> None:
    assert health_url("http://gw:8000/v1") == "http://gw:8000/health"
    assert health_url("http://gw:8000/v1/") == "http://gw:8000/health"
    assert health_url("http://gw/prefix") == "http://gw/prefix/health"


def test_polling_finds_the_models_and_announce_reflects_them(
    fake: OpenAIFake, backends: list[LlmdBackend]
) -> None:
    backend = start(backends, fake.url + "/v1")
    wait_for(lambda: healthy(backend))
    facts = backend.announce()
    assert facts["models"] == sorted(MODELS)
    assert json.loads(facts["llmd_models"]) == MODELS
    paths = {r.path for r in fake.requests}
    assert {"/health", "/v1/models"} <= paths


def test_announce_never_waits_for_the_network(backends: list[LlmdBackend]) -> None:
    with socket.socket() as s:  # a listener that never answers: every poll hangs
        s.bind(("127.0.0.1", 0))
        s.listen()
        backend = start(backends, f"http://127.0.0.1:{s.getsockname()[1]}/v1")
        time.sleep(0.1)
        started = time.monotonic()
        facts = backend.announce()
        assert time.monotonic() - started < 0.05
        assert facts == {"models": [], "llmd_models": "{}", "llmd_healthy": "0"}
        backend.close()


def test_health_500_means_no_models_until_it_recovers(
    fake: OpenAIFake, backends: list[LlmdBackend]
) -> None:
    backend = start(backends, fake.url + "/v1")
    wait_for(lambda: healthy(backend))
    fake.health_status = 500
    wait_for(lambda: not healthy(backend))
    assert backend.announce()["models"] == [] and backend.announce()["llmd_models"] == "{}"
    fake.health_status = 200
    wait_for(lambda: healthy(backend))
    assert backend.announce()["models"] == sorted(MODELS)


def test_a_gateway_without_health_is_not_unhealthy(
    fake: OpenAIFake, backends: list[LlmdBackend]
) -> None:
    fake.health_status = 404
    backend = start(backends, fake.url + "/v1")
    wait_for(lambda: healthy(backend))
    assert backend.announce()["models"] == sorted(MODELS)


def test_an_unreachable_upstream_is_unhealthy_and_logged_once(
    backends: list[LlmdBackend], caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = start(backends, f"http://127.0.0.1:{port}/v1", LLMD_API_KEY=KEY)
    with caplog.at_level("WARNING", logger="workers.llmd"):
        time.sleep(0.4)  # several polls
    assert backend.announce()["llmd_healthy"] == "0"
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and r.name == "workers.llmd"]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    assert KEY not in caplog.text


def test_no_poller_without_a_base_url() -> None:
    backend = LlmdBackend.from_env({})
    assert backend.poller is None
    assert backend.announce() == {"models": [], "llmd_models": "{}", "llmd_healthy": "0"}


def test_close_stops_polling(fake: OpenAIFake, backends: list[LlmdBackend]) -> None:
    backend = start(backends, fake.url + "/v1")
    wait_for(lambda: healthy(backend))
    backend.close()
    assert backend.poller is not None and not backend.poller.is_alive()
    seen = len(fake.requests)
    time.sleep(0.2)
    assert len(fake.requests) == seen


def test_streams_with_no_key(fake: OpenAIFake, backends: list[LlmdBackend]) -> None:
    backend = start(backends, fake.url + "/v1")
    text, done = run(backend, job())
    assert text == "Hello! You said: Hi llm-d"
    assert done == Done("stop", Usage(prompt_tokens=5, completion_tokens=5))
    (chat,) = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert chat.headers["authorization"] == "Bearer EMPTY"  # the placeholder vLLM ignores


def test_key_static_and_forwarded_headers_reach_the_upstream(
    fake: OpenAIFake, backends: list[LlmdBackend]
) -> None:
    fake.api_key = KEY
    backend = start(
        backends, fake.url + "/v1", LLMD_API_KEY=KEY, LLMD_HEADERS='{"X-Gateway-Tenant": "team-a"}'
    )
    forwarded = {"x-session-id": "s-42", "x-gateway-model-name": "llama"}
    run(backend, job(api_key_env="LLMD_API_KEY", headers=forwarded))
    run(backend, job(api_key_env="LLMD_API_KEY", headers={"x-session-id": "s-43"}))
    chats = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert [c.headers.get("x-session-id") for c in chats] == ["s-42", "s-43"]
    assert chats[0].headers["x-gateway-model-name"] == "llama"
    assert "x-gateway-model-name" not in chats[1].headers  # per request, not stuck on a client
    assert all(c.headers["x-gateway-tenant"] == "team-a" for c in chats)
    assert fake.bearer_only(KEY)
    assert len(backend._clients) == 1  # forwarded headers do not multiply SDK clients
    wait_for(lambda: healthy(backend))  # the polls carry the key and static headers too
    polls = [r for r in fake.requests if r.path == "/v1/models"]
    assert polls and all(p.headers["authorization"] == f"Bearer {KEY}" for p in polls)
    assert all(p.headers["x-gateway-tenant"] == "team-a" for p in polls)


def test_a_wrong_key_is_401(fake: OpenAIFake, backends: list[LlmdBackend]) -> None:
    fake.api_key = KEY
    backend = start(backends, fake.url + "/v1", LLMD_API_KEY="wrong-key-abcdefghijkl")
    with pytest.raises(AuthenticationError) as info:
        list(backend.stream(job(api_key_env="LLMD_API_KEY")))
    assert "wrong-key-abcdefghijkl" not in info.value.message
    wait_for(lambda: backend.poller is not None and "401" in backend.poller.last.reason)
    assert not healthy(backend)


@pytest.mark.parametrize(("env", "read"), [({}, 900.0), ({"LLMD_TIMEOUT": "30"}, 30.0)])
def test_the_long_read_timeout_and_its_override(env: dict[str, str], read: float) -> None:
    backend = LlmdBackend.from_env(env)  # no LLMD_BASE_URL: no poller
    ep = endpoint(
        job(), {**backend.env, "LLMD_BASE_URL": "http://gw.invalid/v1"}, key_required=False
    )
    client = backend.client(ep, ep.headers)
    assert client.timeout.read == read
    assert client.timeout.connect == 10.0


def test_a_dead_gateway_mid_stream_is_a_502(fake: OpenAIFake, backends: list[LlmdBackend]) -> None:
    backend = start(backends, fake.url + "/v1", ROUTER_UPSTREAM_RETRIES="2")
    got: list[Any] = []
    with pytest.raises(UpstreamError):
        for item in backend.stream(job(messages=[{"role": "user", "content": "DIE_MIDWAY"}])):
            got.append(item)
    assert len(got) == 2 and len([r for r in fake.requests if r.method == "POST"]) == 1


@pytest.mark.parametrize("base", ["http://[::1/v1", "ftp://gw/v1", "http://gw .invalid/v1"])
def test_a_malformed_base_url_never_kills_the_poller(
    backends: list[LlmdBackend], base: str
) -> None:
    backend = start(backends, base)
    time.sleep(0.2)
    assert backend.poller is not None and backend.poller.is_alive()
    assert backend.poller.last.reason != "not polled yet"
    assert backend.announce()["llmd_healthy"] == "0"
