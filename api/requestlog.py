"""The request log, written off the request path, kept for a retention period, and
`irouter log tail` and `irouter log prune` to read and trim it.

What is recorded, and when, is api/accounting.py's: it hands each finished completion's
entry to `RequestLogWriter.submit`, which never blocks: the entry goes on a bounded queue,
or is dropped and counted when the queue is full (the database fell behind). One background
thread per process takes entries off the queue and inserts them in batches, one transaction
per batch, so SQLite sees a few writes a second however many requests there are. Under
gunicorn's gevent workers the thread is a greenlet: each batch holds the hub for one
executemany.

The same thread prunes: after a batch, at most once an hour (`PRUNE_INTERVAL`), it deletes
the entries older than ROUTER_REQUEST_LOG_RETENTION days (default 30; 0 keeps them all),
in transactions of a few thousand rows, a bounded number per pass: a large backlog (the
first start after an upgrade) is caught up pass by pass, after the following batches.

    irouter log tail [-n N] [--follow] [--json]
    irouter log prune [--older-than DAYS]
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
from core.settings import DEFAULTS, Settings, spec
from registry.requestlog import (
    DEFAULT_RETENTION_DAYS,
    PRUNE_BATCH,
    LogEntry,
    entries_after,
    prune_entries,
    recent_entries,
    retention_cutoff,
    write_entries,
)

logger = logging.getLogger(__name__)

MAX_QUEUE = DEFAULTS.request_log_queue  # entries waiting for the database; more are dropped
BATCH_SIZE = DEFAULTS.request_log_batch  # entries per INSERT transaction
FLUSH_INTERVAL = 0.5  # seconds an entry may wait for companions before its batch is written
PRUNE_INTERVAL = 3600.0  # seconds between one process's prunes of old entries
PRUNE_BATCHES = 10  # DELETE transactions per prune; more left waits for the next batch
RETENTION_SETTING = spec("request_log_retention").variable  # ROUTER_REQUEST_LOG_RETENTION


class RequestLogWriter:
    """A bounded queue in front of the request-log table, drained by one thread in batches.

    `submit` is the only method a request calls. `start` is implicit on the first submit
    (in the process that submits: safe across gunicorn's fork) unless `autostart=False`.
    `close` writes what is queued and stops the thread. After a batch the thread deletes
    entries older than `retention_days` (0: never), at most every `prune_interval` seconds
    and `prune_batches` transactions of `prune_batch` rows at a time.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_queue: int = MAX_QUEUE,
        batch_size: int = BATCH_SIZE,
        flush_interval: float = FLUSH_INTERVAL,
        autostart: bool = True,
        retention_days: float = DEFAULT_RETENTION_DAYS,
        prune_interval: float = PRUNE_INTERVAL,
        prune_batch: int = PRUNE_BATCH,
        prune_batches: int = PRUNE_BATCHES,
    ) -> None:
        self.engine, self.batch_size, self.flush_interval = engine, batch_size, flush_interval
        self.autostart = autostart
        self.retention_days, self.prune_interval = retention_days, prune_interval
        self.prune_batch, self.prune_batches = prune_batch, prune_batches
        self.pruned = 0  # old entries deleted
        self._next_prune = 0.0  # monotonic time of the next prune (0: after the first batch)
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
            self._prune_if_due()

    def _prune_if_due(self) -> None:
        """Delete entries past the retention period, if this process's turn has come."""
        now = time.monotonic()
        if self.retention_days <= 0 or now < self._next_prune:
            return
        cutoff = retention_cutoff(self.retention_days)
        try:
            deleted = prune_entries(
                self.engine, cutoff, batch=self.prune_batch, max_batches=self.prune_batches
            )
        except SQLAlchemyError as exc:
            # A locked database: try again next interval; the log only grows meanwhile.
            logger.warning("request log: old entries not pruned (%s)", exc)
            deleted = 0
        self.pruned += deleted
        more = deleted >= self.prune_batch * self.prune_batches  # a backlog: go on soon
        self._next_prune = time.monotonic() + (self.flush_interval if more else self.prune_interval)
        if deleted:
            logger.info(
                "request log: pruned %d entries older than %g days", deleted, self.retention_days
            )

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
    settings = Settings.from_config(app.config)
    if settings.request_log:
        writer = RequestLogWriter(
            app.extensions["services"].engine,
            max_queue=settings.request_log_queue,
            batch_size=settings.request_log_batch,
            retention_days=retention_days(settings.request_log_retention),
        )
        atexit.register(writer.close)
    app.extensions["requestlog"] = writer
    return writer


def retention_days(value: Any) -> float:
    """ROUTER_REQUEST_LOG_RETENTION as days (a number, 0: keep everything); anything else
    stops the start with a message, rather than keep the log forever unnoticed."""
    try:
        days = float(str(value).strip())
    except ValueError:
        days = -1.0
    if not days >= 0:  # also NaN
        raise ValueError(f"{RETENTION_SETTING} must be a number of days (0: keep all): {value!r}")
    return days


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


# -- irouter log prune --------------------------------------------------------------------


@log.command("prune")
@click.option(
    "--older-than",
    "days",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="DAYS",
    help=f"Delete entries older than this many days [default: {RETENTION_SETTING}, "
    f"else {DEFAULT_RETENTION_DAYS:g}].",
)
def prune(days: float | None) -> None:
    """Delete the entries older than the retention period, now (the API also does it by
    itself, hourly). SQLite reuses the freed space; the file does not shrink."""
    from registry.db import database_url, init_db, make_engine

    if days is None:
        try:
            days = retention_days(Settings.load(os.environ).request_log_retention)
        except ValueError as exc:  # a SettingsError too: not a number
            raise click.ClickException(str(exc)) from None
        if days == 0:
            click.echo(f"{RETENTION_SETTING}=0 keeps every entry: nothing pruned")
            return
    engine = make_engine(database_url(os.environ))
    init_db(engine, os.environ, sync=False)
    try:
        deleted = prune_entries(engine, retention_cutoff(days))
    except SQLAlchemyError as exc:
        raise click.ClickException(f"cannot prune the request log: {exc}") from None
    click.echo(f"pruned {deleted} request-log entries older than {days:g} days")
