"""The router's web surface through the real API under gunicorn, the real worker and model:
no other site's page can open its WebSockets, post it jobs or reach it through a DNS name
of its own; WebSockets have a size cap, pings and an idle timeout; a request sent while a
job runs is answered, not dropped; ids are checked before Redis sees them."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from simple_websocket import Client as WsClient
from simple_websocket import ConnectionClosed
from wsproto import ConnectionType, WSConnection
from wsproto.events import CloseConnection, Ping, Request

from tests.e2e.test_jobs import LONG
from tests.wsread import first_message

SHORT = {
    "model": "smollm2-135m",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 8,
    "temperature": 0,
}
TERMINAL = {"done", "error", "cancelled"}
MAX_MESSAGE = 65536  # the small API's ROUTER_MAX_CONTENT_LENGTH
IDLE = 2  # the small API's ROUTER_WS_IDLE_TIMEOUT


@pytest.fixture(scope="module")
def small_api(start_api: Callable[..., str], worker: Any) -> str:
    """An API with tight WebSocket limits and one extra allowed origin."""
    return start_api(
        "api-surface",
        ROUTER_MAX_CONTENT_LENGTH=str(MAX_MESSAGE),
        ROUTER_WS_IDLE_TIMEOUT=str(IDLE),
        ROUTER_KEEPALIVE="1",
        ROUTER_ALLOWED_ORIGINS="https://chat.example.com",
    )


def handshake_status(url: str, path: str, **headers: str) -> int:
    """The HTTP status a WebSocket handshake for `path` gets (101: accepted)."""
    parts = urlsplit(url)
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {headers.pop('Host', parts.netloc)}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
    ]
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


def messages(ws: WsClient, until: set[str], timeout: float = 90) -> list[dict]:
    out: list[dict] = []
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        raw = ws.receive(timeout=5)
        if raw is None:
            continue
        out.append(orjson.loads(raw))
        if out[-1]["type"] in until:
            return out
    raise AssertionError(f"no {until} within {timeout}s: {out}")


def close(ws: WsClient) -> None:
    with contextlib.suppress(ConnectionClosed, OSError):
        ws.close()


# -- another site's pages ---------------------------------------------------------------------


def test_a_websocket_handshake_from_another_origin_is_refused(api_url: str) -> None:
    own = api_url  # http://127.0.0.1:<port>, the Host the client uses
    for path in ("/v1/ws", "/v1/jobs/job_0123456789abcdef01234567/ws"):
        assert handshake_status(api_url, path, Origin="http://evil.example") == 403
        assert handshake_status(api_url, path, Origin="null") == 403
        assert handshake_status(api_url, path, Origin=own) == 101  # the web UI
        assert handshake_status(api_url, path) == 101  # no Origin: not a browser


def test_allowed_origins_lets_another_site_in(small_api: str) -> None:
    assert handshake_status(small_api, "/v1/ws", Origin="https://chat.example.com") == 101
    assert handshake_status(small_api, "/v1/ws", Origin="https://evil.example") == 403


def test_a_rebound_name_cannot_reach_the_router(http: httpx.Client, api_url: str) -> None:
    """A page on attacker.example whose name now resolves to 127.0.0.1 sends its own Host."""
    rebound = {"Host": f"attacker.example:{urlsplit(api_url).port}"}
    for path in ("/v1/models", "/admin/workers", "/"):
        resp = http.get(path, headers=rebound)
        assert resp.status_code == 400, path
        assert resp.json()["error"]["code"] == "invalid_host"
    assert handshake_status(api_url, "/v1/ws", Origin="http://attacker.example", **rebound) == 400
    assert http.get("/v1/models", headers={"Host": "localhost"}).status_code == 200


def test_a_cross_site_text_plain_post_creates_no_job(http: httpx.Client, stack: Any) -> None:
    """What an HTML form or `fetch(..., {mode: "no-cors"})` on another site can send."""
    before = len(stack.redis().keys("router:job:job_*[0-9a-f]"))
    body = orjson.dumps(SHORT)
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "text/plain;charset=UTF-8"}):
        resp = http.post("/v1/jobs", content=body, headers=headers)
        assert resp.status_code == 415
        assert resp.json()["error"]["code"] == "unsupported_media_type"
    evil = {"Content-Type": "application/json", "Origin": "http://evil.example"}
    assert http.post("/v1/jobs", content=body, headers=evil).status_code == 403
    assert len(stack.redis().keys("router:job:job_*[0-9a-f]")) == before
    made = http.post("/v1/jobs", json=SHORT)  # httpx, like the openai SDK, says JSON
    assert made.status_code == 202
    http.delete(f"/v1/jobs/{made.json()['id']}")


# -- WebSocket limits -------------------------------------------------------------------------


def test_a_websocket_message_over_the_limit_closes_the_socket(small_api: str) -> None:
    ws = WsClient.connect(small_api.replace("http", "ws") + "/v1/ws")
    big = orjson.dumps({"model": "missing", "messages": [{"role": "user", "content": "x" * 70000}]})
    assert len(big) > MAX_MESSAGE
    try:
        with contextlib.suppress(ConnectionClosed, OSError):  # it may close while we send
            ws.send(big.decode())
        with pytest.raises(ConnectionClosed):
            for _ in range(5):
                assert ws.receive(timeout=2) is None, "the oversized message was answered"
        assert ws.close_reason == 1009  # MESSAGE_TOO_BIG
    finally:
        close(ws)


def test_an_idle_websocket_is_closed(small_api: str) -> None:
    ws = WsClient.connect(small_api.replace("http", "ws") + "/v1/ws")
    t0 = time.monotonic()
    try:
        with pytest.raises(ConnectionClosed):
            while time.monotonic() - t0 < IDLE + 8:
                ws.receive(timeout=1)
        assert IDLE - 0.5 < time.monotonic() - t0 < IDLE + 5
        assert ws.close_reason == 1000
    finally:
        close(ws)


def test_the_server_pings_websockets(small_api: str) -> None:
    parts = urlsplit(small_api)
    conn = WSConnection(ConnectionType.CLIENT)
    pings = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=1) as sock:
        sock.sendall(conn.send(Request(host=parts.netloc, target="/v1/ws")))
        give_up = time.monotonic() + 4
        while time.monotonic() < give_up and not pings:
            with contextlib.suppress(TimeoutError):
                conn.receive_data(sock.recv(65536) or None)
            for event in conn.events():
                if isinstance(event, Ping):
                    pings += 1
                    sock.sendall(conn.send(event.response()))
                elif isinstance(event, CloseConnection):
                    pytest.fail(f"closed before a ping: {event}")
    assert pings, "no ping within 4 s at ROUTER_KEEPALIVE=1"


def test_a_request_sent_while_a_job_runs_is_answered_and_the_job_goes_on(
    api_url: str, http: httpx.Client
) -> None:
    ws = WsClient.connect(api_url.replace("http", "ws") + "/v1/ws")
    try:
        ws.send(orjson.dumps(LONG).decode())
        job = messages(ws, {"token"})[0]
        ws.send(orjson.dumps(SHORT).decode())
        seen = messages(ws, {"error", *TERMINAL})
        refusal = seen[-1]
        assert refusal["type"] == "error", "the second request was dropped silently"
        assert refusal["error"]["code"] == "request_in_progress"
        assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"
        assert messages(ws, {"token"})[-1]["type"] == "token"  # the first job goes on
        ws.send(orjson.dumps({"type": "cancel"}).decode())
        assert messages(ws, TERMINAL)[-1]["type"] == "cancelled"
        ws.send(orjson.dumps(SHORT).decode())  # and the socket takes the next request
        assert messages(ws, TERMINAL)[-1]["type"] == "done"
    finally:
        close(ws)


# -- identifiers ------------------------------------------------------------------------------


def test_job_sockets_check_ids_before_redis(api_url: str, http: httpx.Client) -> None:
    job_id = http.post("/v1/jobs", json=SHORT).json()["id"]
    stream = first_message(api_url, f"/v1/jobs/{job_id}:events/ws")
    assert stream["type"] == "error" and stream["error"]["code"] == "job_not_found"
    arabic_one = first_message(api_url, f"/v1/jobs/{job_id}/ws?last_event_id=%D9%A1")
    assert arabic_one["type"] == "error"
    assert arabic_one["error"]["param"] == "last_event_id"
    assert http.get(f"/v1/jobs/{job_id}:events").status_code == 404
    http.delete(f"/v1/jobs/{job_id}")


def test_an_idempotency_conflict_names_no_other_job(http: httpx.Client) -> None:
    headers = {"Idempotency-Key": f"surface-{time.time()}"}
    first = http.post("/v1/jobs", json=SHORT, headers=headers).json()["id"]
    other = http.post("/v1/jobs", json={**SHORT, "max_tokens": 5}, headers=headers)
    assert other.status_code == 409
    assert first not in other.json()["error"]["message"]
    http.delete(f"/v1/jobs/{first}")
