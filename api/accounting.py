"""Accounting: every chat completion recorded exactly once, in the Prometheus metrics
(api/metrics.py) and the request log (api/requestlog.py), whichever way it was asked for
and however it ended. Billing per API key reads this record, so it must be complete.

Each request that asks for a completion begins a `Completion` (`begin`): POST
/v1/chat/completions (JSON or SSE), each request on WS /v1/ws, POST /v1/jobs. A request
refused before any job exists (unknown model, prompt too long, no usable deployment, an
Idempotency-Key reused with another body) is recorded at once. Otherwise the job that answers
is written into the ledger (api/ledger.py) before the client hears of it, and the completion
is recorded when that job's terminal event is seen:

- by the request reading it (JSON, SSE, WebSocket), which times its first token and knows
  the status its client got;
- by this API process's accountant thread (api/accountant.py), for a job nobody here reads
  to its end: every /v1/jobs job (whether or not anyone polls or streams it: readers of
  /v1/jobs never record), and a synchronous job whose reader stopped early (its client
  left, the read failed), recorded with the status that client got and the tokens of the
  job's end;
- by another API process, which adopts the ledger of a process that stopped (a crash, a
  restart) and follows its jobs the same way.

Whoever removes the job from the ledger records it, and only one can (HDEL): a completion
is counted once however many readers its job has, and a job superseded by a fallback leaves
the ledger without a record. Accounting costs a request one Redis round trip (the ledger
write, while the worker is already claiming the job); removals are batched. A job
whose end has not been seen GRACE seconds past its deadline is recorded 504 without tokens.

Why the API process that submits a job, and not elsewhere: the request path (ChatService)
cannot see the end of a job nobody reads, nor outlive its process; a worker sees every end,
but the request log lives in the registry database, which workers do not open (they need
only Redis), and a worker knows neither the model the client asked for nor the status the
client got. So the submitting process owes the record, and Redis holds the debt until it
is paid, by that process or, if it is gone, by another.

Tokens are what the job's terminal event reports: `done` carries the backend's usage; an
`error` or `cancelled` event written by a worker carries what the attempt had used by then
(tasks/events.py), so a failed or cancelled completion is billed for what it consumed.

This module is the request's side: a `Completion`, how its end is recorded (`Outcome`), and
`begin`. The thread, with the timing it keeps (GRACE among them), is api/accountant.py's
`Accountant`; `init_app` there gives an app its accountant.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from flask import current_app, g, has_request_context

from api import tenancy
from api.auth import current_caller
from api.ledger import Entry
from api.serving import ChatService, Started, Submitted
from core.logs import current_request_id
from tasks.events import StreamEvent
from tasks.jobs import IdempotencyConflict
from tasks.keys import Event
from tasks.tenants import Hold
from workers.errors import RouterError
from workers.protocol import Usage

log = logging.getLogger(__name__)

OK = "200"
CLIENT_GONE = "499"  # nginx's "client closed request": went away or cancelled
TIMED_OUT = "504"  # no end seen by GRACE seconds past the job's deadline (api/accountant.py)
UNKNOWN = "unknown"  # model label of a request for a model the registry does not have


class Recorder(Protocol):
    """What a Completion asks of the accountant that records it (api/accountant.py)."""

    def begin(
        self, requested: str, *, request_id: str = "", key_name: str | None = None
    ) -> Completion: ...

    def open(self, entry: Entry) -> bool: ...

    def drop(self, job_id: str) -> None: ...

    def follow(self, completion: Completion) -> None: ...

    def settle(self, completion: Completion, outcome: Outcome) -> None: ...

    def release(self, hold: Hold | None, tokens: int, cost: float) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """How a completion ended, as recorded."""

    status: str  # HTTP status as text; 499 when the client went away or cancelled
    prompt_tokens: int
    completion_tokens: int
    latency: float  # seconds, request start to the job's last event
    ttft: float | None  # seconds, request start to the first token; None if not seen live


def failure_status(exc: BaseException) -> str:
    """The HTTP status a client got for `exc` (499: its job was cancelled)."""
    if isinstance(exc, RouterError):
        return CLIENT_GONE if exc.code == "job_cancelled" else str(exc.status_code)
    if isinstance(exc, IdempotencyConflict):
        return "409"
    if isinstance(exc, redis.RedisError):
        return "503"
    return "500"


def event_status(event: StreamEvent) -> str:
    """The status a terminal event stands for."""
    if event.type is Event.DONE:
        return OK
    if event.type is Event.ERROR:
        return str(event.error.status if event.error else 500)
    return CLIENT_GONE


def entry_of(completion: Completion, sub: Submitted) -> Entry:
    """The ledger entry of `completion` answered by the job `sub`."""
    route = sub.route
    return Entry(
        job_id=sub.job_id,
        requested=completion.requested,
        request_id=completion.request_id,
        key_name=completion.key_name,
        started_at=completion.started_at,
        model=route.id,
        backend=sub.deployment.backend,
        input_price=route.input_price,
        output_price=route.output_price,
        deadline=sub.deadline,
        hold=completion.hold,
    )


class Completion:
    """One chat completion, from the request that asked for it to its one record.

    The request tells it what happens (`start` or `submit`, the events it reads, `follow`
    when it reads nothing, `leave` implied when it stops early); it records through its
    accountant (api/accountant.py) when the answering job ends. It never fails the request."""

    def __init__(
        self,
        accountant: Recorder,
        requested: str,
        *,
        request_id: str = "",
        key_name: str | None = None,
        started_at: float | None = None,
        live: bool = True,
    ) -> None:
        self.accountant = accountant
        self.requested, self.request_id, self.key_name = requested, request_id, key_name
        self.started_at = time.time() if started_at is None else started_at
        #: monotonic start while this process has watched it from the start; None for a
        #: completion adopted from a stopped process (no first-token time, Redis clock)
        self.t0 = time.monotonic() if live else None
        self.job: Entry | None = None  # the job that answers
        self.registered = False  # whether the ledger holds `job`
        self.ttft: float | None = None
        self.last_id = "0-0"  # the last event seen
        self.status: str | None = None  # what the client got, once its reader stopped early
        self.finished = False
        self.hold: Hold | None = None  # what admission reserved of the key's limits

    @classmethod
    def adopted(cls, accountant: Recorder, entry: Entry) -> Completion:
        """A completion another API process owed, taken over from its ledger."""
        found = cls(
            accountant,
            entry.requested,
            request_id=entry.request_id,
            key_name=entry.key_name,
            started_at=entry.started_at,
            live=False,
        )
        found.job, found.registered, found.hold = entry, True, entry.hold
        return found

    # -- what the request does --------------------------------------------------------------

    def admit(self, service: ChatService, req: Any, size: int) -> None:
        """Reserve the request against its key's limits (api/tenancy.py), before any job
        exists; the record settles the reservation. `size`: the request body's bytes."""
        caller = current_caller()
        if tenancy.reserves(caller):
            route = service.resolve(req.model)
            self.hold = tenancy.admit(service.services, caller, req, route, size)

    def start(
        self,
        service: ChatService,
        req: Any,
        headers: Any = None,
        client: Any = None,
        *,
        size: int = 0,
    ) -> Started:
        """`service.start`, accounted: admitted first; each job it submits is this
        completion's until a fallback replaces it; a failure before the first token (a
        limit's 429 included) is recorded and re-raised; the returned Started's events are
        watched."""
        try:
            self.admit(service, req, size)
            started = service.start(req, headers=headers, client=client, on_submit=self.submitted)
        except Exception as exc:
            self.finish(failure_status(exc))
            raise
        for event in started.head:
            self.see(event)
        return Started(started.sub, started.head, self.events(started.rest))

    def submit(self, service: ChatService, req: Any, *, size: int = 0, **kwargs: Any) -> Submitted:
        """`service.submit`, accounted: admitted first; a refusal is recorded and re-raised;
        a job created by an earlier request with the same Idempotency-Key is that
        request's to record (this one's reservation is given back)."""
        try:
            self.admit(service, req, size)
            sub = service.submit(req, **kwargs)
        except Exception as exc:
            self.finish(failure_status(exc))
            raise
        if sub.replayed:
            self.finished = True  # counted by the request that created it
            self.accountant.release(self.hold, 0, 0.0)
        else:
            self.submitted(sub)
        return sub

    def submitted(self, sub: Submitted) -> None:
        """`sub` answers this completion now; a job it replaced (fallback) answers nothing."""
        previous = self.job if self.registered else None
        try:
            self.job = entry_of(self, sub)
        except Exception:  # never fail the request: it is recorded without its job
            log.exception("accounting: job %s not accounted", sub.job_id)
            return
        if previous is not None and previous.job_id != sub.job_id:
            self.accountant.drop(previous.job_id)
        self.registered = self.accountant.open(self.job)

    def follow(self) -> None:
        """Nobody in this request reads the job: the accountant follows it to its end."""
        if not self.finished:
            self.accountant.follow(self)

    def events(self, events: Iterable[StreamEvent | None]) -> Iterator[StreamEvent | None]:
        """Pass a job's events through, noting the first token and the end. A reader that
        stops before the end hands the completion to the accountant, with the status its
        client got: 499 when it is closed (client gone), the error's status when reading
        failed."""
        try:
            for event in events:
                if event is not None:
                    self.see(event)
                yield event
        except Exception as exc:
            self.leave(failure_status(exc))
            raise
        finally:
            self.leave(CLIENT_GONE)

    # -- what happens to the job ------------------------------------------------------------

    def see(self, event: StreamEvent) -> None:
        """One event of the answering job, in order."""
        self.last_id = event.id
        if event.type is Event.TOKEN and self.ttft is None and self.t0 is not None:
            self.ttft = time.monotonic() - self.t0
        elif event.type.terminal:
            self.finish(self.status or event_status(event), event.usage, event.id)

    def leave(self, status: str) -> None:
        """The reader stops before the job's end; its client got `status`. The accountant
        follows the job to its end for the tokens it used."""
        if self.finished or self.status is not None:
            return
        self.status = status
        if self.job is None:
            self.finish(status)
        else:
            self.accountant.follow(self)

    def finish(self, status: str, usage: Usage | None = None, event_id: str = "") -> None:
        """The completion ended with `status`: record it (later calls do nothing)."""
        if self.finished:
            return
        self.finished = True
        prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        outcome = Outcome(status, prompt, completion, self.elapsed(event_id), self.ttft)
        self.accountant.settle(self, outcome)

    def elapsed(self, event_id: str = "") -> float:
        """Seconds since the request arrived: by this process's clock if it watched from the
        start; else to the Redis time in `event_id` (the job's last event), or to now."""
        if self.t0 is not None:
            return time.monotonic() - self.t0
        end = int(event_id.split("-", 1)[0]) / 1000 if event_id else time.time()
        return max(end - self.started_at, 0.0)


def begin(service: ChatService, model: object) -> Completion:
    """The completion the current request asks for: of `model` as the registry names it
    (`unknown` when it has no such model), with the request's id."""
    route = service.services.registry.get().resolve(model) if isinstance(model, str) else None
    rid = g.get("request_id") if has_request_context() else None
    accountant: Recorder = current_app.extensions["accounting"]
    requested = route.id if route else UNKNOWN
    key_name = current_caller().key_name
    return accountant.begin(
        requested, request_id=rid or current_request_id() or "", key_name=key_name
    )
