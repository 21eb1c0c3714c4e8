"""A TCP proxy in front of Redis that can strand a Celery consumer in its read.

`stall()` stops passing Redis's replies to the connections open now that have sent a BRPOP
(kombu's consumer waiting for a message), and to no other: the consumer waits forever
while Redis answers everyone else, the heartbeat included; connections opened later pass.
That is the stuck consumer tasks/consumer.py exists for, made on demand.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class StallProxy:
    """Forward 127.0.0.1:`port` to Redis on `upstream_port`; use as a context manager."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._brpop: set[socket.socket] = set()  # client sides that sent a BRPOP
        self._stalled: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []

    def __enter__(self) -> StallProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()

    def stall(self) -> int:
        """Strand every consumer waiting on a BRPOP now; how many connections that is."""
        with self._lock:
            self._stalled |= self._brpop
            return len(self._stalled)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # Redis is down: so is this connection, as if direct
                client.close()
                continue
            self._socks += [client, upstream]
            threading.Thread(
                target=self._pump, args=(client, upstream, client), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, client), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, client: socket.socket) -> None:
        """Copy `src` to `dst` until either closes; replies to a stalled client are held."""
        to_client = dst is client
        try:
            while data := src.recv(65536):
                if not to_client and b"BRPOP" in data:
                    with self._lock:
                        self._brpop.add(client)
                if to_client and client in self._stalled:
                    continue  # Redis answered; the consumer never hears of it
                dst.sendall(data)
        except OSError:
            pass  # one side went away: end both
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
