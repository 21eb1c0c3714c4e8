"""Limits per API key in Redis: requests and tokens per minute, and a budget per period, each
checked and reserved in one Lua script (tasks/lua/admit.lua), then settled to what the request
really used (tasks/lua/settle.lua). Every API process and replica shares the same state, so a
limit holds exactly however many there are.

    router:tenant:{name}                  hash  rpm_used, rpm_at, tpm_used, tpm_at: the
                                                buckets; parallel: the key's max-parallel
    router:tenant:{name}:spend:{period}   hash  spent, reserved (nano-USD) in one budget period
    router:tenant:{name}:running          zset  job id -> deadline: its jobs dispatched to a
                                                worker and not ended (tasks/lua/release.lua)

Money is counted in nano-USD, as integers, so that reservations and settlements add up
exactly. Nothing here knows of keys' secrets: a tenant is the key's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import redis

from tasks import keys
from tasks.jobs import lua

NANO = 1_000_000_000  # nano-USD per USD
WINDOW = 60.0  # seconds: the R and T of RPM and TPM


def nano_usd(usd: float) -> int:
    return round(usd * NANO)


@dataclass(frozen=True)
class Limits:
    """A key's limits; None: none. `budget` is nano-USD per period."""

    rpm: int | None = None
    tpm: int | None = None
    budget: int | None = None


class Refusal(StrEnum):
    RPM = "rpm"
    TPM = "tpm"
    TOO_LARGE = "too_large"  # more tokens than the TPM limit allows in a minute
    BUDGET = "budget"


@dataclass(frozen=True)
class Hold:
    """What admission reserved for one request, until its record settles it: `tokens` of
    the tenant's `tpm` bucket, `cost` nano-USD of the budget of `period` ('' for none),
    whose spend hash is kept `keep` seconds."""

    tenant: str
    tpm: int
    tokens: int
    cost: int
    period: str
    keep: int


@dataclass(frozen=True)
class Window:
    """One limit's state after the request, as OpenAI's x-ratelimit-* headers tell it."""

    limit: int
    remaining: int
    reset: float  # seconds until the bucket is empty again


@dataclass(frozen=True)
class Admission:
    refused: Refusal | None
    retry_after: float  # seconds, when refused by a rate
    requests: Window | None
    tokens: Window | None


def _window(limit: int | None, used: float) -> Window | None:
    if not limit:
        return None
    return Window(limit, max(math.floor(limit - used), 0), used * WINDOW / limit)


class Tenants:
    """The limiter's Redis operations, one round trip each."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._admit = client.register_script(lua("admit"))
        self._settle = client.register_script(lua("settle"))

    def admit(
        self,
        tenant: str,
        limits: Limits,
        tokens: int,
        cost: int,
        period: str,
        keep: int,
        *,
        reserve: bool = True,
    ) -> Admission:
        """Reserve one request, `tokens` and `cost` nano-USD of the budget of `period`
        (kept `keep` seconds, 0: for ever) if every limit allows it; else say which one
        refuses and reserve nothing. With `reserve` False, only read the buckets."""
        spend = keys.spend_key(tenant, period) if limits.budget is not None and period else ""
        res = self._admit(
            keys=[keys.tenant_key(tenant), spend],
            args=[
                limits.rpm or 0,
                limits.tpm or 0,
                tokens,
                limits.budget if limits.budget is not None else 0,
                cost,
                keep,
                "1" if reserve else "0",
            ],
        )
        refused = Refusal(res[0]) if res[0] else None
        return Admission(
            refused,
            float(res[1]),
            _window(limits.rpm, float(res[2])),
            _window(limits.tpm, float(res[3])),
        )

    def settle(self, hold: Hold, tokens: int, cost: int) -> None:
        """Settle what `hold` reserved to the `tokens` and `cost` (nano-USD) really used."""
        spend = keys.spend_key(hold.tenant, hold.period) if hold.period else ""
        self._settle(
            keys=[keys.tenant_key(hold.tenant), spend],
            args=[hold.tpm, hold.tokens, tokens, hold.cost, cost, hold.keep],
        )

    def spend(self, tenant: str, period: str) -> tuple[int, int]:
        """(spent, reserved) nano-USD of `period`."""
        spent, reserved = self.redis.hmget(keys.spend_key(tenant, period), ["spent", "reserved"])
        return int(spent or 0), int(reserved or 0)
