"""POST-then-poll jobs, cancellation, SSE replay with Last-Event-ID, and WebSockets,
through the real API, queue and model."""

from __future__ import annotations

import contextlib
import time

import httpx
import orjson
from simple_websocket import Client as WsClient
from simple_websocket import ConnectionClosed

from tasks import keys
from tests.wsread import first_message

LONG = {
    "model": "smollm2-135m",
    "messages": [{"role": "user", "content": "Write a long poem about the sea and the sky."}],
    "max_tokens": 300,
    "temperature": 0,
}
SHORT = {
    "model": "smollm2-135m",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 24,
    "temperature": 0,
}


def poll(http: httpx.Client, job_id: str, until: set[str], timeout: float = 90) -> dict:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {until}: {job}")


def sse_frames(http: httpx.Client, path: str, headers: dict | None = None, stop_after: int = 0):
    """Parse a jobs SSE stream into (id, event, data) frames."""
    frames: list[tuple[str, str, dict]] = []
    with http.stream("GET", path, headers=headers or {}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        frame: dict[str, str] = {}
        for line in resp.iter_lines():
            if line.startswith(("id:", "event:", "data:")):
                key, _, value = line.partition(": ")
                frame[key.rstrip(":")] = value
            elif line == "" and "event" in frame:
                frames.append((frame.get("id", ""), frame["event"], orjson.loads(frame["data"])))
                frame = {}
                if stop_after and len(frames) >= stop_after:
                    break
    return frames


def test_post_then_poll_until_succeeded(http: httpx.Client, openai_client) -> None:
    resp = http.post("/v1/jobs", json=SHORT)
    assert resp.status_code == 202
    job = resp.json()
    assert job["object"] == "job" and job["status"] in ("queued", "running")
    assert resp.headers["location"] == f"/v1/jobs/{job['id']}"
    done = poll(http, job["id"], {"succeeded"})
    result = done["result"]
    assert result["object"] == "chat.completion"
    assert result["choices"][0]["message"]["content"] == done["text"]
    direct = openai_client.chat.completions.create(**SHORT)
    assert done["text"] == direct.choices[0].message.content
    assert done["finished_at"] >= done["started_at"] >= done["created_at"]


def test_deliveries_leave_no_kombu_bookkeeping_behind(http: httpx.Client, stack) -> None:
    """Ack emulation is off: the job index, not kombu's unacked hash, makes delivery safe."""
    job_id = http.post("/v1/jobs", json=SHORT).json()["id"]
    poll(http, job_id, {"succeeded"})
    assert not stack.redis().exists("unacked", "unacked_index")
    backlog = keys.queued_key("local-mps")
    assert stack.redis().zscore(backlog, job_id) is None  # claimed: out of the index


def test_idempotency_key_returns_the_same_job(http: httpx.Client) -> None:
    headers = {"Idempotency-Key": f"key-{time.time()}"}
    first = http.post("/v1/jobs", json=SHORT, headers=headers)
    again = http.post("/v1/jobs", json=SHORT, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = http.post("/v1/jobs", json={**SHORT, "max_tokens": 5}, headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    poll(http, first.json()["id"], {"succeeded"})


def test_cancel_a_running_job_stops_it_and_frees_the_worker(http: httpx.Client) -> None:
    job_id = http.post("/v1/jobs", json=LONG).json()["id"]
    running = poll(http, job_id, {"running"})
    while len(running["text"]) < 10:
        running = http.get(f"/v1/jobs/{job_id}").json()
    resp = http.delete(f"/v1/jobs/{job_id}")
    assert resp.status_code == 200
    cancelled = resp.json()
    assert cancelled["status"] == "cancelled" and cancelled["cancel_requested"]
    time.sleep(1.0)
    after = http.get(f"/v1/jobs/{job_id}").json()
    assert after["text"] == cancelled["text"]  # no token after the cancel
    assert len(after["text"]) < 300 * 3
    frames = sse_frames(http, f"/v1/jobs/{job_id}/events")
    assert frames[-1][1] == "cancelled"
    assert http.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"  # idempotent


def test_cancel_unknown_and_finished_jobs(http: httpx.Client) -> None:
    assert http.delete("/v1/jobs/job_doesnotexist").status_code == 404
    job_id = http.post("/v1/jobs", json=SHORT).json()["id"]
    poll(http, job_id, {"succeeded"})
    resp = http.delete(f"/v1/jobs/{job_id}")
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "job_finished"


def test_sse_resume_from_last_event_id_gives_exactly_the_missing_tokens(
    http: httpx.Client,
) -> None:
    job_id = http.post("/v1/jobs", json={**LONG, "max_tokens": 60}).json()["id"]
    head = sse_frames(http, f"/v1/jobs/{job_id}/events", stop_after=8)
    assert [f[1] for f in head] == ["token"] * 8
    rest = sse_frames(http, f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": head[-1][0]})
    assert rest[-1][1] == "done"
    tokens = [f for f in head + rest if f[1] == "token"]
    assert [f[2]["seq"] for f in tokens] == list(range(len(tokens)))  # no gap, no repeat
    full = sse_frames(http, f"/v1/jobs/{job_id}/events")
    assert [f[0] for f in full] == [f[0] for f in head + rest]
    text = "".join(f[2]["delta"] for f in tokens)
    assert text == http.get(f"/v1/jobs/{job_id}").json()["text"]
    by_query = sse_frames(http, f"/v1/jobs/{job_id}/events?last_event_id={head[-1][0]}")
    assert by_query == rest


def test_events_for_unknown_job_and_bad_last_event_id(http: httpx.Client) -> None:
    assert http.get("/v1/jobs/job_nope/events").status_code == 404
    job_id = http.post("/v1/jobs", json=SHORT).json()["id"]
    resp = http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "garbage"})
    assert resp.status_code == 400
    poll(http, job_id, {"succeeded"})


def test_a_late_duplicate_delivery_of_a_finished_job_is_dropped(http: httpx.Client, stack) -> None:
    from tasks.dispatch import enqueue

    job_id = http.post("/v1/jobs", json=SHORT).json()["id"]
    done = poll(http, job_id, {"succeeded"})
    events = stack.redis().xlen(f"router:job:{job_id}:events")
    enqueue(stack.redis(), job_id, 1, "local-mps")  # as a broker redelivery would
    time.sleep(2.0)
    assert stack.redis().xlen(f"router:job:{job_id}:events") == events
    assert http.get(f"/v1/jobs/{job_id}").json() == done


def close(ws: WsClient) -> None:
    """Close our side; the server may already have closed after the last event."""
    with contextlib.suppress(ConnectionClosed, OSError):  # the server may have closed first
        ws.close()


def ws_messages(ws: WsClient, until: set[str], timeout: float = 60) -> list[dict]:
    out: list[dict] = []
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        raw = ws.receive(timeout=5)
        if raw is None:
            continue
        msg = orjson.loads(raw)
        out.append(msg)
        if msg["type"] in until:
            return out
    raise AssertionError(f"no {until} within {timeout}s: {out}")


def test_websocket_chat_streams_tokens_and_serves_several_requests(
    api_url: str, openai_client
) -> None:
    ws = WsClient.connect(api_url.replace("http", "ws") + "/v1/ws")
    try:
        ws.send(orjson.dumps(SHORT).decode())
        msgs = ws_messages(ws, {"done", "error"})
        assert msgs[0]["type"] == "job" and msgs[0]["backend"] == "local"
        assert msgs[-1]["type"] == "done" and msgs[-1]["usage"]["completion_tokens"] > 0
        text = "".join(m["delta"] for m in msgs if m["type"] == "token")
        direct = openai_client.chat.completions.create(**SHORT)
        assert text == direct.choices[0].message.content
        ws.send(orjson.dumps({"model": "missing", "messages": SHORT["messages"]}).decode())
        err = ws_messages(ws, {"error"})[-1]
        assert err["error"]["code"] == "model_not_found"
        ws.send("not json")
        assert ws_messages(ws, {"error"})[-1]["error"]["type"] == "invalid_request_error"
        ws.send(orjson.dumps(LONG).decode())
        first = ws_messages(ws, {"token"})
        ws.send(orjson.dumps({"type": "cancel"}).decode())
        rest = ws_messages(ws, {"cancelled", "done"})
        assert rest[-1]["type"] == "cancelled", first
    finally:
        close(ws)


def test_websocket_that_created_a_job_cancels_it_when_it_drops(
    api_url: str, http: httpx.Client
) -> None:
    ws = WsClient.connect(api_url.replace("http", "ws") + "/v1/ws")
    ws.send(orjson.dumps(LONG).decode())
    msgs = ws_messages(ws, {"token"})
    close(ws)  # the UI tab goes away mid-answer
    job = poll(http, msgs[0]["id"], {"cancelled", "succeeded"}, timeout=30)
    assert job["status"] == "cancelled"


def test_websocket_follows_an_existing_job(http: httpx.Client, api_url: str) -> None:
    job_id = http.post("/v1/jobs", json=SHORT).json()["id"]
    ws = WsClient.connect(api_url.replace("http", "ws") + f"/v1/jobs/{job_id}/ws")
    try:
        msgs = ws_messages(ws, {"done", "error"})
    finally:
        close(ws)
    text = "".join(m["delta"] for m in msgs if m["type"] == "token")
    assert msgs[-1]["type"] == "done"
    assert text == http.get(f"/v1/jobs/{job_id}").json()["text"]


def test_websocket_unknown_job_gets_an_error(api_url: str) -> None:
    message = first_message(api_url, "/v1/jobs/job_missing/ws")
    assert message["type"] == "error" and message["error"]["code"] == "job_not_found"
