"""The request log, written off the request path, and `irouter log tail` to read it.

A request hands its finished entry to `RequestLogWriter.submit`, which never blocks: the
entry goes on a bounded queue, or is dropped and counted when the queue is full (the
database fell behind). One background thread per process takes entries off the queue and
inserts them in batches, one transaction per batch, so SQLite sees a few writes a second
however many requests there are. Under gunicorn's gevent workers the thread is a greenlet:
each batch holds the hub for one executemany.

    irouter log tail [-n N] [--follow] [--json]
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from typing import Any

import click
import orjson
from flask import Flask
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from api.metrics import record_log_drop
from registry.requestlog import LogEntry, entries_after, recent_entries, write_entries

logger = logging.getLogger(__name__)

MAX_QUEUE = 10_000  # entries waiting for the database; more are dropped
BATCH_SIZE = 500  # entries per INSERT transaction
FLUSH_INTERVAL = 0.5  # seconds an entry may wait for companions before its batch is written


class RequestLogWriter:
    """A bounded queue in front of the request-log table, drained by one thread in batches.

    `submit` is the only method a request calls. `start` is implicit on the first submit
    (in the process that submits: safe across gunicorn's fork) unless `autostart=False`.
    `close` writes what is queued and stops the thread.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_queue: int = MAX_QUEUE,
        batch_size: int = BATCH_SIZE,
        flush_interval: float = FLUSH_INTERVAL,
        autostart: bool = True,
    ) -> None:
        self.engine, self.batch_size, self.flush_interval = engine, batch_size, flush_interval
        self.autostart = autostart
        self.queue: queue.Queue[LogEntry | None] = queue.Queue(maxsize=max_queue)
        self.written = 0  # entries stored
        self.dropped = 0  # entries refused because the queue was full
        self.failed = 0  # entries lost to a database error
        self.batches = 0  # INSERT transactions that succeeded
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def submit(self, entry: LogEntry) -> bool:
        """Queue `entry` without waiting; False (dropped and counted) if the queue is full."""
        if self.autostart and not self.running():
            self.start()
        try:
            self.queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1
            record_log_drop()
            return False
        return True

    def running(self) -> bool:
        """Whether this process's writing thread is up (a forked child has none)."""
        t = self._thread
        return t is not None and self._pid == os.getpid() and t.is_alive()

    def start(self) -> None:
        """Start the writing thread of this process (again after a fork or a close)."""
        with self._lock:
            if self.running():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Write everything queued so far, then stop the thread (waits up to `timeout`)."""
        thread = self._thread
        if thread is None or not self.running():
            return
        try:
            self.queue.put(None, timeout=timeout)  # the stop sign, behind every entry
        except queue.Full:
            logger.warning(
                "request log: queue still full at close; %d entries lost", self.queue.qsize()
            )
            return
        thread.join(timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.flush_interval
            while len(batch) < self.batch_size:
                try:
                    item = self.queue.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._write(batch)

    def _write(self, batch: list[LogEntry]) -> None:
        try:
            self.written += write_entries(self.engine, batch)
            self.batches += 1
        except SQLAlchemyError as exc:
            # The thread must outlive a locked or missing database: count the loss, go on.
            self.failed += len(batch)
            logger.warning("request log: %d entries not written (%s)", len(batch), exc)


def init_app(app: Flask) -> RequestLogWriter | None:
    """Give the app a writer on the registry's database, at app.extensions["requestlog"]
    (None with REQUEST_LOG off); queued entries are written when the process exits."""
    if "requestlog" in app.extensions:
        found: RequestLogWriter | None = app.extensions["requestlog"]
        return found
    writer = None
    if _on(app.config.get("REQUEST_LOG", True)):
        writer = RequestLogWriter(
            app.extensions["router"].engine,
            max_queue=int(app.config.get("REQUEST_LOG_QUEUE", MAX_QUEUE)),
            batch_size=int(app.config.get("REQUEST_LOG_BATCH", BATCH_SIZE)),
        )
        atexit.register(writer.close)
    app.extensions["requestlog"] = writer
    return writer


def _on(value: Any) -> bool:
    return str(value).strip().lower() not in ("0", "false", "no", "off", "")


# -- irouter log tail ---------------------------------------------------------------------

HEADER = (
    f"{'TIME':19} {'REQUEST':28} {'MODEL':20} {'BACKEND':10} {'STATUS':6} "
    f"{'LATENCY':>9} {'TTFT':>8} {'IN':>6} {'OUT':>6} {'COST $':>10}  FALLBACK"
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms"


def format_entry(e: LogEntry) -> str:
    """One table row of `irouter log tail`."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time))
    return (
        f"{when:19} {e.request_id:28} {e.model:20} {e.backend:10} {e.status:6} "
        f"{_ms(e.latency_ms):>9} {_ms(e.ttft_ms):>8} {e.prompt_tokens:>6} "
        f"{e.completion_tokens:>6} {e.cost_usd:>10.6f}  {e.fallback or '-'}"
    )


def _echo(entries: list[LogEntry], as_json: bool) -> None:
    for e in entries:
        click.echo(orjson.dumps(e.to_dict()).decode() if as_json else format_entry(e))


@click.group("log")
def log() -> None:
    """The request log: one line per finished chat completion."""


@log.command("tail")
@click.option("-n", "lines", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--follow", "-f", is_flag=True, help="Keep printing entries as they arrive.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Poll (s).")
def tail(lines: int, follow: bool, as_json: bool, interval: float) -> None:
    """The last N entries, oldest first; with --follow, then each new one."""
    from registry.db import database_url, init_db, make_engine

    engine = make_engine(database_url(os.environ))
    init_db(engine, os.environ, sync=False)
    try:
        entries = recent_entries(engine, lines)
    except SQLAlchemyError as exc:
        raise click.ClickException(f"cannot read the request log: {exc}") from None
    if not as_json:
        click.echo(HEADER)
    _echo(entries, as_json)
    if not follow:
        return
    last = entries[-1].id if entries else _last_id(engine)
    try:
        while True:
            time.sleep(interval)
            new = entries_after(engine, last or 0)
            _echo(new, as_json)
            if new:
                last = new[-1].id
    except KeyboardInterrupt:
        return


def _last_id(engine: Engine) -> int:
    newest = recent_entries(engine, 1)
    return (newest[0].id or 0) if newest else 0
