"""Admission of a completion against its API key's limits: RPM, TPM and the USD budget.

At admission one Lua script (tasks/tenants.py) reserves, atomically across every API
process and replica: one request; the tokens it may use (the prompt estimated from its text
without a tokenizer, plus `max_tokens` or the model's cap); and the worst case of its cost.
The worst case is priced at the request body's size in prompt tokens (a token is at least a
byte of its text) plus the most tokens it may generate, at the dearest model it may fall back
to, so the actual cost never exceeds what was reserved and concurrent requests can never
spend past a budget together. The completion's one record (api/accountant.py) settles the
reservation to what the worker reported, partial usage of a cancelled or failed job included.

Every /v1 response of a key with RPM or TPM limits carries OpenAI's x-ratelimit-* headers.
"""

from __future__ import annotations

import math
import time

import redis
from flask import Flask, Response, g

from api.auth import Caller
from api.routing import chain
from api.schemas import ChatCompletionRequest
from api.services import Services
from registry.apikeys import KeyInfo, period_key, period_seconds
from registry.queries import ModelRoute, Snapshot
from tasks.tenants import NANO, Admission, Hold, Limits, Refusal, Window
from workers.errors import RateLimitError
from workers.protocol import prompt_token_estimate

#: Tokens a chat template may add around the request's text, over the body's bytes.
TEMPLATE_TOKENS = 16


class QuotaExceeded(RateLimitError):
    """429 as OpenAI words a spent budget: type and code insufficient_quota."""

    type = "insufficient_quota"
    code = "insufficient_quota"


def limits(key: KeyInfo) -> Limits:
    budget = None if key.budget_usd is None else math.floor(key.budget_usd * NANO)
    return Limits(rpm=key.rpm, tpm=key.tpm, budget=budget)


def completion_cap(req: ChatCompletionRequest, route: ModelRoute) -> int:
    """The most tokens `route` may generate for `req`."""
    asked = req.max_completion_tokens or req.max_tokens
    return min(asked, route.max_tokens) if asked else route.max_tokens


def worst_cost(req: ChatCompletionRequest, size: int, routes: list[ModelRoute]) -> int:
    """Nano-USD the request can cost at most, on whichever of `routes` answers it."""
    prompt = size + TEMPLATE_TOKENS
    dearest = max(prompt * r.input_price + completion_cap(req, r) * r.output_price for r in routes)
    return math.ceil(dearest * NANO / 1_000_000)  # prices are USD per 1M tokens


def reserves(caller: Caller) -> bool:
    """Whether the caller's key has an RPM, TPM or budget: admission has something to do."""
    return caller.key is not None and caller.key.reserves


def admit(
    services: Services, caller: Caller, req: ChatCompletionRequest, route: ModelRoute, size: int
) -> Hold | None:
    """Reserve the request against its key's RPM, TPM and budget, or raise 429. None: the
    caller has no such limit (nothing to reserve, no round trip). `size`: the request
    body's bytes."""
    key = caller.key
    if key is None or not key.reserves:
        return None
    tokens = cost = keep = 0
    period = ""
    if key.tpm is not None:
        tokens = prompt_token_estimate(req.messages_as_dicts()) + completion_cap(req, route)
    if key.budget_usd is not None:
        snapshot: Snapshot = services.registry.get()
        cost = worst_cost(req, size, [r for r in chain(route, snapshot) if caller.allows(r.id)])
        now = time.time()
        period = period_key(key.budget_period, now)
        length = period_seconds(key.budget_period, now)  # 0: `total`, kept for ever
        keep = length + 86400 if length else 0
    found = services.tenants.admit(caller.name, limits(key), tokens, cost, period, keep)
    g.ratelimit = found
    refuse(found, key)
    return Hold(caller.name, key.tpm or 0, tokens, cost, period, keep)


def refuse(found: Admission, key: KeyInfo) -> None:
    """Raise the 429 OpenAI answers for the limit that refused, if one did."""
    if found.refused is None:
        return
    if found.refused is Refusal.BUDGET:
        raise QuotaExceeded(
            f"You exceeded the budget of key `{key.name}` ({key.budget_usd:g} USD per "
            f"{key.budget_period}); ask its operator to raise it, or wait for the next period."
        )
    if found.refused is Refusal.TOO_LARGE:
        raise RateLimitError(
            f"Request too large for key `{key.name}`: it may use more tokens than its limit of "
            f"{key.tpm} per minute. Send a shorter prompt or a smaller max_tokens."
        )
    what = "requests" if found.refused is Refusal.RPM else "tokens"
    limit = key.rpm if found.refused is Refusal.RPM else key.tpm
    raise RateLimitError(
        f"Rate limit reached for key `{key.name}` on {what} per minute: limit {limit}. "
        f"Try again in {found.retry_after:.1f}s.",
        retry_after=found.retry_after,
    )


def duration(seconds: float) -> str:
    """`x-ratelimit-reset-*` as OpenAI writes it: `20ms`, `1s`, `6m0s`."""
    if seconds < 1:
        return f"{max(math.ceil(seconds * 1000), 0)}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def _window_headers(resp: Response, name: str, window: Window | None) -> None:
    if window is not None:
        resp.headers[f"x-ratelimit-limit-{name}"] = str(window.limit)
        resp.headers[f"x-ratelimit-remaining-{name}"] = str(window.remaining)
        resp.headers[f"x-ratelimit-reset-{name}"] = duration(window.reset)


def ratelimit_headers(services: Services, resp: Response) -> Response:
    """Add x-ratelimit-* to a /v1 response of a key with RPM or TPM limits: as admission
    left them, or as the buckets stand now (one read) for a request that admitted nothing."""
    caller: Caller | None = g.get("caller")  # set by api/auth.py on every /v1 request
    key = caller.key if caller is not None else None
    if key is None or (key.rpm is None and key.tpm is None):
        return resp
    found: Admission | None = g.get("ratelimit")
    if found is None:
        try:
            found = services.tenants.admit(key.name, limits(key), 0, 0, "", 0, reserve=False)
        except redis.RedisError:
            return resp  # the response matters more than its headers

    _window_headers(resp, "requests", found.requests)
    _window_headers(resp, "tokens", found.tokens)
    return resp


def init_app(app: Flask, services: Services) -> None:
    app.after_request(lambda resp: ratelimit_headers(services, resp))
