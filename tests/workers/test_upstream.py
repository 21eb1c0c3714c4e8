"""The shared provider machinery: the status table, Retry-After, scrubbing, the retry loop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.settings import Settings
from workers.errors import (
    AuthenticationError,
    GatewayTimeoutError,
    InvalidRequestError,
    RateLimitError,
    RouterError,
    ServiceUnavailableError,
    UpstreamError,
)
from workers.upstream import RetryPolicy, retry_after_seconds, retrying, scrub, status_error


@pytest.mark.parametrize(
    ("status", "client_status", "type_"),
    [
        (400, 400, "invalid_request_error"),
        (401, 401, "authentication_error"),
        (403, 403, "permission_error"),
        (404, 404, "invalid_request_error"),
        (408, 504, "server_error"),
        (409, 409, "invalid_request_error"),
        (413, 413, "invalid_request_error"),
        (422, 422, "invalid_request_error"),
        (429, 429, "rate_limit_error"),
        (500, 502, "server_error"),
        (502, 502, "server_error"),
        (503, 503, "server_error"),
        (504, 504, "server_error"),
        (529, 503, "server_error"),
        (418, 400, "invalid_request_error"),
        (599, 502, "server_error"),
    ],
)
def test_upstream_statuses_map_by_table(status: int, client_status: int, type_: str) -> None:
    err = status_error(status, "boom")
    assert (err.status_code, err.type, err.message) == (client_status, type_, "boom")


def test_status_error_keeps_upstream_code_and_param() -> None:
    err = status_error(400, "too long", code="context_length_exceeded", param="messages")
    assert (err.code, err.param) == ("context_length_exceeded", "messages")
    assert status_error(418, "teapot").code == "upstream_418"


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"Retry-After": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_scrub_removes_whole_and_partial_keys() -> None:
    key = "sk-test-0123456789abcdefghijklmnop"
    text = f"Incorrect API key provided: {key}. Also {key[:20]}..."
    out = scrub(text, [key])
    assert "0123456789" not in out
    assert out.startswith("Incorrect API key provided: ***")
    assert scrub("nothing here", [key]) == "nothing here"


def test_policy_delays() -> None:
    policy = RetryPolicy(retries=2, base=0.5, cap=8.0, max_retry_after=30)
    assert 0 <= policy.delay(1, UpstreamError("x")) <= 0.5  # type: ignore[operator]
    assert 0 <= policy.delay(2, ServiceUnavailableError("x")) <= 1.0  # type: ignore[operator]
    assert policy.delay(3, UpstreamError("x")) is None  # retries used up
    assert policy.delay(1, InvalidRequestError("x")) is None  # not retryable
    assert policy.delay(1, AuthenticationError("x")) is None
    assert policy.delay(1, RateLimitError("x", retry_after=2.0)) == 2.0
    assert policy.delay(1, RateLimitError("x", retry_after=60.0)) is None  # too long to wait
    assert policy.delay(1, GatewayTimeoutError("x")) is not None


def test_policy_from_settings() -> None:
    env = {"ROUTER_UPSTREAM_RETRIES": "5", "ROUTER_UPSTREAM_BACKOFF": "0.01"}
    policy = RetryPolicy.from_settings(Settings.load(env))
    assert (policy.retries, policy.base, policy.cap) == (5, 0.01, 8.0)


class Flaky:
    """Fails with the given errors on successive opens, then streams `items`."""

    def __init__(self, errors: list[RouterError], items: list[str], die_after: int = -1) -> None:
        self.errors, self.items, self.die_after = list(errors), items, die_after
        self.opens = 0
        self.closed = False

    def open(self) -> Iterator[str]:
        self.opens += 1
        try:
            if self.errors:
                raise self.errors.pop(0)
            for i, item in enumerate(self.items):
                if i == self.die_after:
                    raise UpstreamError("died mid-stream")
                yield item
        finally:
            self.closed = True


def test_retries_until_success_before_the_first_item() -> None:
    flaky = Flaky([ServiceUnavailableError("a"), RateLimitError("b", retry_after=0.01)], ["x"])
    waits: list[float] = []
    out = list(retrying(flaky.open, RetryPolicy(retries=2, base=0.01), sleep=waits.append))
    assert out == ["x"] and flaky.opens == 3
    assert waits[1] == 0.01 and 0 <= waits[0] <= 0.01


def test_retries_exhausted_raise_the_last_error() -> None:
    flaky = Flaky([UpstreamError("a")] * 3, ["x"])
    with pytest.raises(UpstreamError):
        list(retrying(flaky.open, RetryPolicy(retries=2, base=0.0), sleep=lambda _: None))
    assert flaky.opens == 3


def test_non_retryable_is_raised_at_once() -> None:
    flaky = Flaky([AuthenticationError("bad key")], ["x"])
    with pytest.raises(AuthenticationError):
        list(retrying(flaky.open, RetryPolicy(retries=5, base=0.0), sleep=lambda _: None))
    assert flaky.opens == 1


def test_never_retried_after_the_first_item() -> None:
    flaky = Flaky([], ["a", "b", "c"], die_after=2)
    got: list[str] = []
    with pytest.raises(UpstreamError):
        for item in retrying(flaky.open, RetryPolicy(retries=5, base=0.0), sleep=lambda _: None):
            got.append(item)
    assert got == ["a", "b"] and flaky.opens == 1


def test_no_retry_past_the_deadline() -> None:
    import time

    flaky = Flaky([UpstreamError("a")], ["x"])
    policy = RetryPolicy(retries=3, base=10.0, cap=10.0)
    with pytest.raises(UpstreamError):
        list(retrying(flaky.open, policy, deadline=time.time(), sleep=lambda _: None))


def test_closing_early_closes_the_upstream() -> None:
    flaky = Flaky([], ["a", "b", "c"])
    stream = retrying(flaky.open, RetryPolicy())
    assert next(stream) == "a"
    stream.close()
    assert flaky.closed
