"""Keep-alives reach the worker: an OpenAI-compatible upstream that sends only SSE comments
(OpenRouter's `: OPENROUTER PROCESSING` while a model is queued) makes the backend yield
empty Chunks, on which the worker checks the job's deadline and cancel flag, instead of
blocking in its read loop; and `retrying` passes keep-alives on without closing its retry
window. The marking of upstream failures for the circuit breaker is checked here too."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.openai_api import OpenAIFake, start_openai_fake
from tests.fakes.server import Reply, sse
from workers.errors import InvalidRequestError, ServiceUnavailableError
from workers.openai_compat import OpenAICompatBackend
from workers.protocol import ChatJob, Chunk, Done
from workers.upstream import RetryPolicy, retrying, status_error

COMMENT = b": OPENROUTER PROCESSING\n\n"


@pytest.fixture
def fake() -> Iterator[OpenAIFake]:
    server = start_openai_fake()
    yield server
    server.stop()


def comments(stop: threading.Event, every: float = 0.05) -> Iterator[bytes]:
    """SSE comments until `stop` (or until the client hangs up)."""
    while not stop.is_set():
        yield COMMENT
        time.sleep(every)


def backend_for(fake: OpenAIFake, **env: str) -> OpenAICompatBackend:
    return OpenAICompatBackend.from_env(
        {
            "OPENROUTER_BASE_URL": fake.url + "/v1",
            "OPENROUTER_API_KEY": "or-key-0123456789",
            "ROUTER_UPSTREAM_RETRIES": "1",
            "ROUTER_UPSTREAM_BACKOFF": "0.01",
            **env,
        }
    )


def job() -> ChatJob:
    return ChatJob(
        id="job_k",
        model="m",
        backend="openrouter",
        kind="openai-compatible",
        upstream_model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hello there"}],
        api_key_env="OPENROUTER_API_KEY",
    )


def test_comments_alone_are_yielded_as_keepalives(fake: OpenAIFake) -> None:
    stop = threading.Event()
    fake.fail_next(Reply(chunks=comments(stop), content_type="text/event-stream"))
    stream = backend_for(fake).stream(job())
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.extend([next(stream), next(stream)]))
    reader.start()
    reader.join(timeout=3)
    try:
        assert not reader.is_alive(), "the read loop swallowed the keep-alives"
        assert got == [Chunk(), Chunk()]
    finally:
        stop.set()
        if not reader.is_alive():
            stream.close()  # type: ignore[attr-defined]


def test_keepalives_then_the_answer(fake: OpenAIFake) -> None:
    answer = sse(
        [
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}},
        ],
        done=True,
    )
    fake.fail_next(Reply(chunks=[COMMENT, COMMENT, *answer], content_type="text/event-stream"))
    items = list(backend_for(fake).stream(job()))
    assert [i for i in items if isinstance(i, Chunk) and not i] == [Chunk(), Chunk()]
    assert [i.delta for i in items if isinstance(i, Chunk) and i] == ["Hi"]
    assert isinstance(items[-1], Done) and items[-1].finish_reason == "stop"


def test_a_failure_after_keepalives_is_still_retried(fake: OpenAIFake) -> None:
    overloaded = sse([{"error": {"message": "overloaded", "code": 503}}])
    fake.fail_next(Reply(chunks=[COMMENT, *overloaded], content_type="text/event-stream"))
    items = list(backend_for(fake).stream(job()))
    assert "".join(i.delta for i in items if isinstance(i, Chunk)) == "Hello! You said: Hello there"
    assert len([r for r in fake.requests if r.method == "POST"]) == 2


class Opens:
    """Streams that yield `items` (raising any exception among them), one list per open."""

    def __init__(self, *streams: list[Any]) -> None:
        self.streams = list(streams)

    def open(self) -> Iterator[Any]:
        for item in self.streams.pop(0):
            if isinstance(item, Exception):
                raise item
            yield item


def test_retrying_passes_keepalives_and_keeps_its_window_open() -> None:
    opens = Opens([Chunk(), Chunk(), ServiceUnavailableError("busy")], [Chunk(), Chunk("ok")])
    out = list(retrying(opens.open, RetryPolicy(retries=1, base=0.0), sleep=lambda _: None))
    assert out == [Chunk(), Chunk(), Chunk(), Chunk("ok")]


def test_errors_of_an_open_upstream_request_are_marked_upstream() -> None:
    assert status_error(502, "bad gateway").upstream
    assert status_error(400, "bad request").upstream  # the upstream answered it, properly
    assert not InvalidRequestError("cannot translate this").upstream
    assert not ServiceUnavailableError("built by us").upstream
    raised = ServiceUnavailableError("mid-stream")
    opens = Opens([Chunk("a"), raised])
    with pytest.raises(ServiceUnavailableError) as info:
        list(retrying(opens.open, RetryPolicy(retries=0)))
    assert info.value is raised and raised.upstream
