"""How an upstream failure becomes the RouterError the client sees: one table form, one
lookup and one wording for every provider backend.

Each backend keeps a table of what its SDK or transport raises -> what that means:

    FAILURES: Table = {
        sdk.StatusError: Answered(read_answer),  # an error answer: class by its status
        sdk.TimeoutError: TIMEOUT,               # no status: the row names the class;
        sdk.ConnectionError: UNREACHED,          # these two, and FAILED, are shared
        sdk.StreamCut: Failure(UpstreamError, DROPPED, "upstream_disconnected"),
    }
    raise translate(exc, FAILURES, ep, midstream=...) from None

`translate` walks the exception's MRO against the table, so the most specific row wins
whatever the table's order (a timeout that is also a connection error is a timeout). An
`Answered` row reads the upstream's status, words and Retry-After out of the exception,
and `workers.upstream.status_error` picks the class by status; a `Failure` row (timeouts,
refused or dropped connections, unreadable answers) names the class and code itself.

Every message reads the same, whichever provider failed:

    `anthropic` upstream answered HTTP 429 (rate_limit_error): <its words>
    `google` upstream reported an error in its stream (UNAVAILABLE): <its words>
    `openai` upstream did not answer in time (connect timeout 10s, read timeout 60s).
    `anthropic` upstream ended its stream before `message_stop`: the answer is incomplete.

The upstream's words are scrubbed of the endpoint's secrets and cut to DETAIL_LIMIT.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from workers.errors import GatewayTimeoutError, RouterError, UpstreamError
from workers.providers import Endpoint
from workers.upstream import scrub, status_error

V = TypeVar("V")

DETAIL_LIMIT = 500  # characters of an upstream's own words relayed to the client

# What happened, said after "`<backend>` upstream "; `{limits}` is the endpoint's timeouts.
TIMED_OUT = "did not answer in time ({limits})"
STALLED = "stopped sending mid-stream ({limits})"
UNREACHABLE = "is unreachable"
DROPPED = "dropped the connection before its answer was complete"
UNREADABLE = "sent an unreadable response"
CALL_FAILED = "call failed"
IN_STREAM = "reported an error in its stream"


def describe(
    backend: str, happened: str, detail: str | None = None, secrets: Sequence[str] = ()
) -> str:
    """The one wording of an upstream failure: "`<backend>` upstream <happened>: <detail>",
    the detail (the upstream's words, or the transport's) scrubbed, then cut to size:
    scrubbing first, so that a cut never leaves part of a key the scrub would have caught."""
    text = f"`{backend}` upstream {happened}"
    said = detail.strip() if detail else ""
    if not said:
        return text + "."
    return f"{text}: {scrub(said, list(secrets))[:DETAIL_LIMIT]}"


def ended_early(backend: str, missing: str) -> str:
    """The message for a stream that ended without `missing` (its last event, or a finish
    reason): the client must not take a cut-off answer for a whole one."""
    return describe(backend, f"ended its stream before {missing}: the answer is incomplete")


def detail_of(exc: BaseException) -> str:
    """What an exception says, with its cause's words when they add something (the SDKs
    wrap "connection refused" in a bare "Connection error.")."""
    text = str(exc).strip() or type(exc).__name__
    cause = exc.__cause__
    said = str(cause).strip() if cause is not None else ""
    return f"{text} ({said})" if said and said not in text else text


@dataclass(frozen=True)
class Answer:
    """An upstream's error answer, read out of whatever its SDK raised.

    `status` is the answer's HTTP status, or for an error inside a 200 stream
    (`in_stream`) the status its error type stands for; `means` overrides the status the
    client sees where the upstream's own says less (Google sends a bad key as a 400)."""

    status: int
    message: str  # the upstream's own words, unscrubbed
    label: str | None = None  # its name for the error: an error type, Google's status name
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None
    in_stream: bool = False
    means: int | None = None

    def describe(self, ep: Endpoint) -> str:
        happened = IN_STREAM if self.in_stream else f"answered HTTP {self.status}"
        if self.label:
            happened += f" ({self.label})"
        return describe(ep.backend, happened, self.message or "no message", ep.secrets())

    def error(self, ep: Endpoint) -> RouterError:
        """The client's error: its class by status (workers.upstream.STATUS_ERRORS)."""
        return status_error(
            self.means or self.status,
            self.describe(ep),
            code=self.code,
            param=self.param,
            retry_after=self.retry_after,
        )


@dataclass(frozen=True)
class Answered:
    """A table row for an exception that carries an upstream's answer: `read` gets the
    Answer out of it. With `midstream_code`, an answer that arrives after content went
    to the client is a 502 with that code instead (the answer is broken; its own status
    would read as "try again", which the client can no longer do)."""

    read: Callable[[Any], Answer]
    midstream_code: str | None = None

    def error(self, exc: BaseException, ep: Endpoint, midstream: bool) -> RouterError:
        answer = self.read(exc)
        if midstream and self.midstream_code:
            return UpstreamError(answer.describe(ep), code=self.midstream_code)
        return answer.error(ep)


@dataclass(frozen=True)
class Failure:
    """A table row for an exception with no upstream status: the client's error class,
    its code (None: the class's own) and what happened; `if_midstream`, the row to use
    instead once the upstream had started answering. `detail`: relay what the exception
    says (a timeout's words only repeat, less exactly, the limits the message names)."""

    error_class: type[RouterError]
    happened: str
    code: str | None = None
    if_midstream: Failure | None = None
    detail: bool = True

    def error(self, exc: BaseException, ep: Endpoint, midstream: bool) -> RouterError:
        row = self.if_midstream if midstream and self.if_midstream else self
        limits = f"connect timeout {ep.connect_timeout:g}s, read timeout {ep.timeout:g}s"
        happened = row.happened.format(limits=limits)
        detail = detail_of(exc) if row.detail else None
        message = describe(ep.backend, happened, detail, ep.secrets())
        return row.error_class(message, code=row.code)


Row = Answered | Failure
Table = Mapping[type[BaseException], Row]

#: The same for every provider: a timeout, worded by when it struck.
TIMEOUT = Failure(
    GatewayTimeoutError,
    TIMED_OUT,
    if_midstream=Failure(GatewayTimeoutError, STALLED, detail=False),
    detail=False,
)

#: The same for every provider: no connection to the upstream at all.
UNREACHED = Failure(UpstreamError, UNREACHABLE, "upstream_unreachable")

#: What an exception no row names means: the call failed, for a reason we relay.
FAILED = Failure(UpstreamError, CALL_FAILED)


def lookup(table: Mapping[type[BaseException], V], exc: BaseException) -> V | None:
    """The row of the most specific class of `exc` the table names (its MRO, in order)."""
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return None


def translate(
    exc: BaseException, table: Table, ep: Endpoint, *, midstream: bool = False
) -> RouterError:
    """The RouterError for `exc`, by its row in `table` (FAILED when none names it).
    `midstream`: the upstream had started answering. Messages are scrubbed of keys."""
    row = lookup(table, exc) or FAILED
    return row.error(exc, ep, midstream)


def caught(table: Table) -> tuple[type[BaseException], ...]:
    """The classes to catch around an upstream call: exactly those the table translates."""
    return tuple(table)
