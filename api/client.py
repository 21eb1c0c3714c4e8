"""The client of a synchronous request, as its job sees it: which API process holds its
connection (the job's owner), how long it said it will wait, and a watch that cancels its
job the moment it hangs up, before the first byte as well as mid-stream.

Under gunicorn's gevent worker the watch is a greenlet waiting for the client's socket to
become readable: a client that is waiting for an answer sends nothing, so readable means
it closed (or reset) the connection. Elsewhere (the Flask test client) nothing is watched.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: Headers in which a client states how long it will wait for the whole answer, in
#: seconds: ours, then the one the official OpenAI SDKs send (their read timeout).
PATIENCE_HEADERS = ("x-request-timeout", "x-stainless-read-timeout")


def patience(headers: Any) -> float | None:
    """Seconds the client will wait (`headers`: a mapping with `.get`), from the first of
    PATIENCE_HEADERS that is a positive number; None when it did not say."""
    for name in PATIENCE_HEADERS:
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        if value > 0 and math.isfinite(value):
            return value
    return None


class ClientWatch:
    """Cancels the current job of a request when its client hangs up."""

    def __init__(self, cancel: Callable[[str], object]) -> None:
        self.cancel = cancel
        self.job_id: str | None = None
        self.gone = False
        self._watcher: Any = None
        self._sock: Any = None

    def attach(self, job_id: str) -> None:
        """The job now answering this request (after a fallback, the new one)."""
        self.job_id = job_id
        if self.gone:
            self.cancel(job_id)

    def start(self, sock: Any) -> None:
        """Watch `sock` (a gevent socket) for readability: an io watcher on the hub, not a
        greenlet, so that a request costs next to nothing until its client leaves."""
        import gevent

        self._sock = sock
        self._watcher = gevent.get_hub().loop.io(sock.fileno(), 1)  # 1: readable
        self._watcher.start(self._readable)

    def stop(self) -> None:
        """The request is over: stop watching (before the connection serves another)."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None

    def _readable(self) -> None:
        """On the hub: peek without blocking; EOF or an error means the client is gone."""
        try:
            gone = self._sock._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return  # woken for nothing: keep watching
        except OSError:
            gone = True
        self.stop()  # gone, or it sent more bytes (pipelining): nothing more to learn
        if gone:
            import gevent

            self.gone = True
            gevent.spawn(self._cancel)  # Redis calls may block: not on the hub

    def _cancel(self) -> None:
        if self.job_id is not None:
            log.info("client went away; cancelling job %s", self.job_id)
            self.cancel(self.job_id)


def watch_client(environ: Mapping[str, Any], cancel: Callable[[str], object]) -> ClientWatch:
    """A watch on this request's client socket, when the server exposes one under gevent."""
    watch = ClientWatch(cancel)
    sock = environ.get("gunicorn.socket")
    if sock is not None and _gevent_patched():
        watch.start(sock)
    return watch


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("socket"))


@dataclass
class Client:
    """A synchronous request's client: the owner id its jobs carry (this API process), its
    patience, and the watch on its connection."""

    owner: str
    patience: float | None = None
    watch: ClientWatch | None = field(default=None)

    def attach(self, job_id: str) -> None:
        if self.watch is not None:
            self.watch.attach(job_id)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()
