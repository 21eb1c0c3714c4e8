"""This API process, announced in Redis while it lives.

A synchronous completion (the client holds its connection open for the answer) names the
API process that holds that connection as its job's owner. If the process dies (a crash,
a restart of the stack), nobody can receive the answer any more: a worker drops such a job
instead of starting it, a job already running is stopped at its next token, and the
queued-jobs index never publishes it again. Jobs made through `POST /v1/jobs` have no
owner: their result is kept for whoever asks.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import uuid

import redis

from tasks.liveness import Liveness

log = logging.getLogger(__name__)


class Presence:
    """Beats `router:apis` every `interval` seconds from a daemon thread (a greenlet under
    gevent) started on first use, after gunicorn has forked; says goodbye at exit."""

    def __init__(self, liveness: Liveness, interval: float) -> None:
        self.liveness, self.interval = liveness, interval
        self._id, self._pid = "", 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    @property
    def ttl(self) -> float:
        return 3 * self.interval

    def id(self) -> str:
        """This process's id, announced before it is first returned."""
        if self._pid != os.getpid():  # first use, or first use in a forked child
            with self._lock:
                if self._pid != os.getpid():
                    self._start()
        return self._id

    def _start(self) -> None:
        new = f"api-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.liveness.api_beat(new, self.ttl)  # alive before any job names it
        self._id, self._pid = new, os.getpid()
        threading.Thread(target=self._run, args=(new,), name="api-presence", daemon=True).start()
        atexit.register(self.goodbye)

    def _run(self, my_id: str) -> None:
        while not self._stopped.wait(self.interval) and self._id == my_id:
            try:
                self.liveness.api_beat(my_id, self.ttl)
            except redis.RedisError as exc:
                log.warning("presence beat failed (%s); retrying", exc)

    def goodbye(self) -> None:
        """Mark this process gone now, so its jobs stop at once rather than in `ttl`."""
        self._stopped.set()
        if not self._id:
            return
        try:
            self.liveness.api_beat(self._id, 0)
        except redis.RedisError as exc:
            log.debug("presence goodbye not sent (%s); it expires instead", exc)
