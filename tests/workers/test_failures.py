"""One wording and one table form for every provider's upstream failures
(workers/failures.py), and the one client cache (workers/clients.py).

The three provider backends, each against the fake of its HTTP API, fail the same ways and
must say so the same way; the table lookup and the cache are checked on their own below."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fakes import anthropic_api, gemini_api
from tests.fakes.openai_api import openai_error, start_openai_fake
from tests.fakes.server import FakeServer, Reply
from workers import errors
from workers.anthropic import AnthropicBackend
from workers.clients import ClientCache
from workers.failures import (
    DETAIL_LIMIT,
    FAILED,
    TIMEOUT,
    Failure,
    Table,
    describe,
    lookup,
    translate,
)
from workers.google import GoogleBackend
from workers.openai_compat import OpenAICompatBackend
from workers.protocol import ChatJob
from workers.providers import CONNECT_TIMEOUT, Endpoint

KEY = "sk-failures-test-0123456789abcdef"


@dataclass(frozen=True)
class Provider:
    """How to reach one provider backend through its fake."""

    backend: str
    kind: str
    model: str
    prefix: str  # of its variables
    key: str
    start: Callable[[], FakeServer]
    path: str  # the fake's base URL is its URL plus this
    make: Callable[[dict[str, str]], Any]
    error: Callable[[int, str, str, dict[str, str]], Reply]  # status, its label, words

    def env(self, fake: FakeServer, **extra: str) -> dict[str, str]:
        return {
            f"{self.prefix}_BASE_URL": fake.url + self.path,
            f"{self.prefix}_API_KEY": self.key,
            "ROUTER_UPSTREAM_RETRIES": "0",
            **extra,
        }

    def job(self) -> ChatJob:
        return ChatJob(
            id="job_f",
            model="m",
            backend=self.backend,
            kind=self.kind,
            upstream_model=self.model,
            messages=[{"role": "user", "content": "Hi there"}],
        )

    def failure(self, fake: FakeServer, **extra: str) -> errors.RouterError:
        with pytest.raises(errors.RouterError) as info:
            list(self.make(self.env(fake, **extra)).stream(self.job()))
        return info.value


PROVIDERS = [
    Provider(
        "openai",
        "openai-compatible",
        "gpt-4o-mini",
        "OPENAI",
        KEY,
        lambda: start_openai_fake(api_key=KEY),
        "/v1",
        OpenAICompatBackend.from_env,
        lambda status, label, said, headers: openai_error(status, said, label, headers=headers),
    ),
    Provider(
        "anthropic",
        "anthropic",
        "claude-test",
        "ANTHROPIC",
        KEY,
        anthropic_api.start_anthropic_fake,
        "",
        AnthropicBackend.from_env,
        lambda status, label, said, headers: anthropic_api.error_reply(
            status, label, said, headers
        ),
    ),
    Provider(
        "google",
        "google",
        "gemini-2.5-flash",
        "GEMINI",
        gemini_api.API_KEY,
        gemini_api.start_gemini_fake,
        "",
        GoogleBackend.from_env,
        lambda status, label, said, headers: gemini_api.google_error(status, said, headers=headers),
    ),
]

#: Each provider's own name for a 429, as its fake (and the real API) sends it.
RATE_LIMITED = {
    "openai": "rate_limit_error",
    "anthropic": "rate_limit_error",
    "google": "RESOURCE_EXHAUSTED",
}


@pytest.fixture(scope="module", params=PROVIDERS, ids=[p.backend for p in PROVIDERS])
def started(request: pytest.FixtureRequest) -> Iterator[tuple[Provider, FakeServer]]:
    p: Provider = request.param
    fake = p.start()
    yield p, fake
    fake.stop()


@pytest.fixture
def provider(started: tuple[Provider, FakeServer]) -> tuple[Provider, FakeServer]:
    """Each provider in turn, its fake reset."""
    started[1].reset()
    return started


# -- the same failure, the same words -------------------------------------------------------
def test_an_error_answer_reads_the_same_from_every_provider(
    provider: tuple[Provider, FakeServer],
) -> None:
    p, fake = provider
    label = RATE_LIMITED[p.backend]
    fake.fail_next(p.error(429, label, f"Slow down, {p.key} is over quota.", {"Retry-After": "7"}))
    err = p.failure(fake)
    assert type(err) is errors.RateLimitError and err.retry_after == 7.0
    assert (
        err.message
        == f"`{p.backend}` upstream answered HTTP 429 ({label}): Slow down, *** is over quota."
    )
    assert (err.status_code, err.type, err.code) == (429, "rate_limit_error", "rate_limit_exceeded")


def test_a_refused_connection_reads_the_same_from_every_provider(
    provider: tuple[Provider, FakeServer],
) -> None:
    p, fake = provider
    with socket.socket() as s:  # a port nobody listens on once it is closed
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    err = p.failure(fake, **{f"{p.prefix}_BASE_URL": url + p.path})
    assert type(err) is errors.UpstreamError and err.code == "upstream_unreachable"
    assert err.message.startswith(f"`{p.backend}` upstream is unreachable: ")


def test_a_timeout_reads_the_same_from_every_provider(
    provider: tuple[Provider, FakeServer],
) -> None:
    p, fake = provider
    fake.fail_next(Reply(200, {}, delay=0.8))
    err = p.failure(fake, **{f"{p.prefix}_TIMEOUT": "0.3"})
    limits = f"connect timeout {CONNECT_TIMEOUT:g}s, read timeout 0.3s"
    assert type(err) is errors.GatewayTimeoutError and err.code == "timeout"
    assert err.message == f"`{p.backend}` upstream did not answer in time ({limits})."
    time.sleep(0.6)  # the fake's late answer then fails inside this test, not the next


# -- the table and the wording --------------------------------------------------------------
class Base(Exception):
    pass


class Middle(Base):
    pass


class Leaf(Middle):
    pass


EP = Endpoint("acme", "http://acme.invalid/v1", KEY, {}, 60.0, 5.0)


def test_the_most_specific_row_wins_whatever_the_order() -> None:
    broad = Failure(errors.UpstreamError, "broad")
    narrow = Failure(errors.UpstreamError, "narrow")
    tables: list[Table] = [{Base: broad, Middle: narrow}, {Middle: narrow, Base: broad}]
    for table in tables:
        assert lookup(table, Leaf()) is narrow and lookup(table, Base()) is broad
    assert lookup({Middle: narrow}, ValueError()) is None
    assert translate(ValueError("odd"), {Middle: narrow}, EP).message == (
        "`acme` upstream call failed: odd"
    )
    assert lookup({Base: FAILED}, Leaf()) is FAILED


def test_a_row_says_when_the_failure_struck() -> None:
    before = translate(TimeoutError("slow"), {TimeoutError: TIMEOUT}, EP)
    after = translate(TimeoutError("slow"), {TimeoutError: TIMEOUT}, EP, midstream=True)
    limits = "(connect timeout 5s, read timeout 60s)."
    assert before.message == f"`acme` upstream did not answer in time {limits}"
    assert after.message == f"`acme` upstream stopped sending mid-stream {limits}"
    assert type(before) is type(after) is errors.GatewayTimeoutError


def test_the_detail_is_scrubbed_before_it_is_cut() -> None:
    said = "x" * (DETAIL_LIMIT - 10) + KEY  # the cut falls inside the key
    text = describe("acme", "answered HTTP 400", said, [KEY])
    assert KEY[:8] not in text and text.endswith("***")
    assert describe("acme", "ended its stream early") == "`acme` upstream ended its stream early."


def test_an_unhelpful_sdk_message_carries_its_cause() -> None:
    try:
        try:
            raise OSError("[Errno 111] Connection refused")
        except OSError as cause:
            raise ConnectionError("Connection error.") from cause
    except ConnectionError as exc:
        err = translate(exc, {ConnectionError: FAILED}, EP)
    assert err.message.endswith("Connection error. ([Errno 111] Connection refused)")


# -- the client cache -----------------------------------------------------------------------
class Client:
    def __init__(self, ep: Endpoint, headers: dict[str, str]) -> None:
        self.ep, self.headers, self.closed = ep, headers, False

    def close(self) -> None:
        self.closed = True


def test_one_client_per_what_makes_a_client() -> None:
    cache: ClientCache[Client] = ClientCache(lambda ep, h: Client(ep, dict(h)))
    first = cache.get(EP)
    assert cache.get(Endpoint("acme", EP.base_url, KEY, {}, 60.0, 5.0)) is first
    assert cache.get(EP, {"X-Tenant": "a"}) is not first
    assert cache.get(Endpoint("acme", EP.base_url, KEY, {}, 30.0, 5.0)) is not first
    assert cache.get(Endpoint("acme", EP.base_url, KEY + "2", {}, 60.0, 5.0)) is not first
    assert len(cache) == 4


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache: ClientCache[Client] = ClientCache(
        lambda ep, h: Client(ep, dict(h)), close=Client.close, limit=2
    )
    a, b = cache.get(EP, {"n": "a"}), cache.get(EP, {"n": "b"})
    assert cache.get(EP, {"n": "a"}) is a  # a is now the most recently used
    c = cache.get(EP, {"n": "c"})
    assert len(cache) == 2 and b.closed and not a.closed
    assert cache.get(EP, {"n": "a"}) is a and cache.get(EP, {"n": "c"}) is c
    cache.close()
    assert a.closed and c.closed and len(cache) == 0
    unclosed: ClientCache[Client] = ClientCache(lambda ep, h: Client(ep, dict(h)), limit=1)
    d = unclosed.get(EP, {"n": "d"})
    unclosed.get(EP, {"n": "e"})
    assert not d.closed  # dropped, not closed: a stream may still be reading through it


def test_threads_asking_at_once_share_one_client() -> None:
    made: list[Client] = []
    gate = threading.Barrier(8)

    def build(ep: Endpoint, headers: Any) -> Client:
        time.sleep(0.05)  # a slow build: the others ask meanwhile
        made.append(Client(ep, dict(headers)))
        return made[-1]

    cache: ClientCache[Client] = ClientCache(build)

    def ask(_: int) -> Client:
        gate.wait()
        return cache.get(EP)

    with ThreadPoolExecutor(8) as pool:
        clients = list(pool.map(ask, range(8)))
    assert len(made) == 1 and all(c is made[0] for c in clients)
