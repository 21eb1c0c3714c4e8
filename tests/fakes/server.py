"""A threaded HTTP server on a free loopback port, for faking one provider's HTTP API.

Each fake registers routes `(method, path prefix) -> handler(request) -> Reply`. Tests
script faults in order with `fail_next(...)` (status, body, headers; or a stream that
dies after some chunks) and read back `requests` (method, path, headers, JSON body).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any


@dataclass
class Reply:
    """A JSON body (`body`) or a stream of raw chunks (`chunks`, e.g. SSE frames).

    `abort_after`: close the connection abruptly after that many chunks (mid-stream death).
    `delay`: seconds to wait before answering (for timeouts)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    chunks: Iterable[bytes] | None = None
    content_type: str = "application/json"
    abort_after: int | None = None
    delay: float = 0.0


Handler = Callable[[Request], Reply]


class FakeServer:
    """Routes plus scripted faults; `url` once started."""

    def __init__(self, routes: dict[tuple[str, str], Handler]) -> None:
        self.routes = routes
        self.requests: list[Request] = []
        self.faults: list[Reply] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- scripting -------------------------------------------------------------------
    def fail_next(self, *replies: Reply) -> None:
        """The next requests (any route) get these replies, in order."""
        with self._lock:
            self.faults.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self.faults.clear()
            self.requests.clear()

    # -- lifecycle -------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeServer:
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                fake._serve(self)

            do_GET = do_POST = do_DELETE = _handle

        self._server = _QuietServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    # -- serving ---------------------------------------------------------------------
    def _route(self, method: str, path: str) -> Handler | None:
        best = None
        for (m, prefix), handler in self.routes.items():
            if m == method and path.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), handler)
        return best[1] if best else None

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        path, _, query = h.path.partition("?")
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        req = Request(h.command, path, query, {k.lower(): v for k, v in h.headers.items()}, body)
        with self._lock:
            self.requests.append(req)
            fault = self.faults.pop(0) if self.faults else None
        handler = self._route(h.command, path)
        if fault is not None:
            reply = fault
        elif handler is None:
            reply = Reply(404, {"error": {"message": f"no route {h.command} {path}"}})
        else:
            reply = handler(req)
        try:
            _write(h, reply)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True  # the client went away (cancelled, timed out): fine


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-reply is what several tests do on purpose


def _write(h: BaseHTTPRequestHandler, reply: Reply) -> None:
    if reply.delay:
        time.sleep(reply.delay)
    h.send_response(reply.status)
    for name, value in reply.headers.items():
        h.send_header(name, value)
    if reply.chunks is None:
        data = json.dumps(reply.body).encode() if reply.body is not None else b""
        h.send_header("Content-Type", reply.content_type)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        return
    h.send_header("Content-Type", reply.content_type)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    for i, piece in enumerate(reply.chunks):
        if reply.abort_after is not None and i >= reply.abort_after:
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)  # the upstream dies mid-stream
            h.close_connection = True
            return
        h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        h.wfile.flush()
    h.wfile.write(b"0\r\n\r\n")
    h.wfile.flush()


def sse(
    events: Iterable[Any], *, event_names: Iterable[str] | None = None, done: bool = False
) -> list[bytes]:
    """SSE frames of JSON payloads (with `event:` lines when names are given)."""
    names = list(event_names) if event_names is not None else None
    frames = []
    for i, payload in enumerate(events):
        head = f"event: {names[i]}\n".encode() if names else b""
        frames.append(head + b"data: " + json.dumps(payload).encode() + b"\n\n")
    if done:
        frames.append(b"data: [DONE]\n\n")
    return frames
