"""What every provider backend shares: the upstream-status table, secret scrubbing, and
the retry loop that may retry a request only until its first chunk has been produced.

    status_error(status, message)  -> the RouterError the client should see
    retrying(open_stream, policy)  -> the stream, retried on 429/5xx/timeouts before the
                                      first chunk, with exponential backoff and jitter,
                                      honouring Retry-After; never retried after it

Backends translate their SDK's exceptions by a table each, all read one way
(workers/failures.py), and an upstream's error answer comes here by its status; this
module decides the rest, once for all of them. It also marks what the upstream caused
(`RouterError.upstream`, which feeds the circuit breaker): every error `status_error`
builds, and every RouterError an open upstream request raises (a backend builds the
request, and rejects what it cannot translate, before `retrying`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

from core.settings import DEFAULTS, Settings
from workers.errors import (
    AuthenticationError,
    ConflictError,
    GatewayTimeoutError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    RouterError,
    ServiceUnavailableError,
    UnprocessableError,
    UpstreamError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Upstream HTTP status -> the error class the client sees (and thus its status and type).
STATUS_ERRORS: dict[int, type[RouterError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: GatewayTimeoutError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: UnprocessableError,
    429: RateLimitError,
    500: UpstreamError,
    502: UpstreamError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
    529: ServiceUnavailableError,  # Anthropic's "overloaded"
}

#: Classes worth another try: the upstream may answer differently in a moment.
RETRYABLE: tuple[type[RouterError], ...] = (
    RateLimitError,
    UpstreamError,
    ServiceUnavailableError,
    GatewayTimeoutError,
)


def status_error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    retry_after: float | None = None,
) -> RouterError:
    """The client-facing error for an upstream HTTP status (other 4xx -> 400, 5xx -> 502)."""
    cls = STATUS_ERRORS.get(status) or (UpstreamError if status >= 500 else InvalidRequestError)
    err = cls(message, param=param, code=code, retry_after=retry_after, upstream=True)
    if code is None and cls is InvalidRequestError and status != 400:
        err.code = f"upstream_{status}"
    return err


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Retry-After (seconds or an HTTP date), or OpenAI's retry-after-ms; None if absent."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lower:
        try:
            return max(0.0, float(lower["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    raw = lower.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every secret (and any prefix of one longer than 8) replaced by `***`.

    Upstreams echo keys back ("Incorrect API key provided: sk-abc...xyz"); whatever we
    relay must not carry one, even partly."""
    for secret in secrets:
        if not secret or len(secret) < 8:
            continue
        text = text.replace(secret, "***")
        head = secret[: max(8, len(secret) // 2)]
        text = text.replace(head, "***")
    return text


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter; Retry-After wins when given."""

    retries: int = DEFAULTS.upstream_retries
    base: float = DEFAULTS.upstream_backoff  # seconds
    cap: float = DEFAULTS.upstream_backoff_max  # seconds
    max_retry_after: float = DEFAULTS.upstream_max_retry_after

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """ROUTER_UPSTREAM_RETRIES, _BACKOFF (base s), _BACKOFF_MAX (cap s), _MAX_RETRY_AFTER."""
        return cls(
            retries=settings.upstream_retries,
            base=settings.upstream_backoff,
            cap=settings.upstream_backoff_max,
            max_retry_after=settings.upstream_max_retry_after,
        )

    def delay(self, attempt: int, err: RouterError) -> float | None:
        """Seconds to wait before retry number `attempt` (1-based), or None: do not retry."""
        if attempt > self.retries or not isinstance(err, RETRYABLE):
            return None
        if err.retry_after is not None:
            return None if err.retry_after > self.max_retry_after else err.retry_after
        return random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


def retrying(
    open_stream: Callable[[], Iterator[T]],
    policy: RetryPolicy,
    *,
    deadline: float | None = None,
    what: str = "upstream",
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[T]:
    """Items of `open_stream()`; a RouterError raised before the first item is retried by
    `policy` (within `deadline`); once an item has been yielded, errors pass straight out.

    Falsy items (empty Chunks: an upstream's keep-alives) are passed on at once, so that
    the consumer checks its deadline and cancel flag while the upstream says nothing, but
    they are not the first item: a failure after them may still be retried. Every
    RouterError raised here comes from an open upstream request: it is marked `upstream`."""
    attempt = 0
    stream: Iterator[T] | None = None
    try:
        while True:
            stream = open_stream()
            try:
                first = next(stream)
                while not first:
                    yield first
                    first = next(stream)
            except StopIteration:
                return
            except RouterError as err:
                err.upstream = True
                attempt += 1
                wait = policy.delay(attempt, err)
                late = deadline is not None and time.time() + (wait or 0) >= deadline
                if wait is None or late:
                    raise
                log.warning(
                    "%s: %s (%s); retry %d in %.2fs", what, err.status_code, err.code, attempt, wait
                )
                sleep(wait)
                continue
            break
        yield first
        yield from stream
    except RouterError as err:
        err.upstream = True
        raise
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # the consumer stopped early: end the upstream request now
