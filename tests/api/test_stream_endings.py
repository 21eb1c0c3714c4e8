"""Every stream ends with exactly one terminal event, and no read waits forever.

A Redis failure after the response started used to cut the chat SSE, the jobs SSE and the
WebSocket off with no error and no `[DONE]`; now each ends with one OpenAI error in its own
format. The failure is injected where it happens in production, in `JobStore.read` (the
`XREAD BLOCK` every reader loops on), on the session's real Redis, worker and model.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from tasks.jobs import JobStore

LONG = {
    "model": "smollm2-135m",
    "messages": [{"role": "user", "content": "Write a long poem about the sea and the sky."}],
    "max_tokens": 200,
    "temperature": 0,
}


def failing_reads(store: JobStore, monkeypatch: pytest.MonkeyPatch, after: int = 0) -> None:
    """From the (after+1)-th call on, `store.read` fails as a dropped Redis connection does."""
    real = store.read
    calls = iter(range(1_000_000))

    def read(job_id: str, since: str, block_ms: int) -> Any:
        if next(calls) >= after:
            raise redis.ConnectionError("Connection closed by server.")
        return real(job_id, since, block_ms)

    monkeypatch.setattr(store, "read", read)


def data_lines(chunks: Iterator[bytes]) -> list[str]:
    text = b"".join(chunks).decode()
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


@pytest.mark.timeout(30)
def test_a_read_with_no_time_left_returns_instead_of_blocking_forever(stack: Any) -> None:
    """XREAD BLOCK 0 means forever; a reader with under 1 ms left used to send it."""
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True, socket_timeout=5)
    store = JobStore(client)
    job_id = f"job_{uuid.uuid4().hex[:24]}"
    for block_ms in (0, -3):
        t0 = time.monotonic()
        assert store.read(job_id, "0-0", block_ms) == []
        assert time.monotonic() - t0 < 1.0


@pytest.mark.timeout(120)
def test_a_redis_failure_mid_chat_stream_ends_it_with_one_error_chunk(
    app: Any, client: Any, monkeypatch: pytest.MonkeyPatch, stack: Any
) -> None:
    resp = client.post("/v1/chat/completions", json={**LONG, "stream": True}, buffered=False)
    assert resp.status_code == 200
    job_id = resp.headers["x-router-job-id"]
    failing_reads(app.extensions["services"].jobs, monkeypatch, after=2)
    lines = data_lines(resp.response)
    assert "[DONE]" not in lines
    last = orjson.loads(lines[-1])
    assert set(last) == {"error"}
    assert (last["error"]["code"], last["error"]["type"]) == ("service_unavailable", "server_error")
    assert all("error" not in orjson.loads(x) for x in lines[:-1])  # one terminal, at the end
    monkeypatch.undo()
    give_up = time.monotonic() + 30  # the job nobody reads any more is cancelled
    while stack.redis().hget(f"router:job:{job_id}", "status") not in ("cancelled", "succeeded"):
        assert time.monotonic() < give_up
        time.sleep(0.1)
    assert stack.redis().hget(f"router:job:{job_id}", "cancel") == "1"


@pytest.mark.timeout(120)
def test_a_redis_failure_mid_jobs_stream_ends_it_with_an_error_frame(
    app: Any, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = client.post("/v1/jobs", json=LONG).get_json()["id"]
    failing_reads(app.extensions["services"].jobs, monkeypatch, after=1)
    resp = client.get(f"/v1/jobs/{job_id}/events", buffered=False)
    assert resp.status_code == 200
    text = b"".join(resp.response).decode()
    frames = [f for f in text.split("\n\n") if f.strip()]
    assert frames[0] == "retry: 1000"
    terminal = [f for f in frames if f.startswith(("event: done", "event: error"))]
    assert terminal == [frames[-1]] and frames[-1].startswith("event: error\ndata: ")
    body = orjson.loads(frames[-1].split("data: ", 1)[1])
    assert body["error"]["code"] == "service_unavailable"
    monkeypatch.undo()
    client.delete(f"/v1/jobs/{job_id}")


class FakeSocket:
    """What `pump` needs of a flask-sock socket: messages sent, and nothing received."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send(self, data: str) -> None:
        self.sent.append(orjson.loads(data))

    def receive(self, timeout: float | None = None) -> str | None:
        return None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("owner", [True, False])
def test_a_redis_failure_mid_websocket_sends_one_error_message(
    app: Any, monkeypatch: pytest.MonkeyPatch, stack: Any, owner: bool
) -> None:
    from api.blueprints.ws import pump
    from api.http import chat_service

    client = app.test_client()
    job_id = client.post("/v1/jobs", json=LONG).get_json()["id"]
    failing_reads(app.extensions["services"].jobs, monkeypatch, after=1)
    ws = FakeSocket()
    with app.test_request_context("/v1/ws"):
        pump(ws, chat_service(), job_id, "local-mps", time.time() + 60, "0-0", owner=owner)
    assert [m["type"] for m in ws.sent].count("error") == 1 and ws.sent[-1]["type"] == "error"
    assert ws.sent[-1]["error"]["code"] == "service_unavailable"
    cancelled = stack.redis().hget(f"router:job:{job_id}", "cancel") == "1"
    assert cancelled is owner  # the socket that made the job takes it down with it
    monkeypatch.undo()
    client.delete(f"/v1/jobs/{job_id}")


def test_a_stream_that_finishes_ends_with_exactly_one_done(client: Any) -> None:
    resp = client.post("/v1/chat/completions", json={**LONG, "max_tokens": 4, "stream": True})
    lines = data_lines(iter([resp.get_data()]))
    assert lines[-1] == "[DONE]" and lines.count("[DONE]") == 1
    assert not any("error" in orjson.loads(x) for x in lines[:-1])
