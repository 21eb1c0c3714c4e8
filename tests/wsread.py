"""Reading a WebSocket's first message with wsproto directly: simple-websocket's client
loses frames that arrive in the same segment as the handshake response, which is what a
server answering at once (and closing) produces."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import orjson
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request, TextMessage


def first_message(url: str, path: str) -> dict:
    """The first text message on `path` of the API at `url`, decoded."""
    parts = urlsplit(url)
    ws = WSConnection(ConnectionType.CLIENT)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(ws.send(Request(host=parts.netloc, target=path)))
        while True:
            data = sock.recv(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, TextMessage):
                    return orjson.loads(event.data)
            assert data, "the server closed without a message"
