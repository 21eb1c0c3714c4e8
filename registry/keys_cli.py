"""`keys` click group: create, list, revoke and rotate API keys, and see what one used.

    irouter keys create NAME [--models ID,...] [--rpm N] [--tpm N] [--max-parallel N]
                             [--budget USD] [--budget-period PERIOD] [--expires YYYY-MM-DD]
    irouter keys list | revoke NAME | rotate NAME | usage NAME [--days N]

A secret is printed once, by `create` and `rotate`: the registry keeps only its hash. With
`--json` those two print one JSON object as their last line of stdout, its `key` the secret,
for scripts that store it. Like the other groups, each command opens the registry at
`DATABASE_URL` and prints a registry error as one line, exit status 2.

`usage` is the one command that reads Redis too (REDIS_URL: the current budget period's
spend, which the API keeps there); it imports tasks only then.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace

import click

from registry.apikeys import (
    DEFAULT_PERIOD,
    PERIODS,
    KeyInfo,
    create_key,
    get_key,
    list_keys,
    parse_expiry,
    revoke_key,
    rotate_key,
)
from registry.cli import _registry, _table
from registry.keyusage import (
    DEFAULT_DAYS,
    KeyUsage,
    Spend,
    Totals,
    budget_of,
    key_usage,
    usage_report,
)

NOT_AGAIN = "This secret will not be shown again: store it now."
REDIS_TIMEOUT = 5.0  # seconds Redis may take to answer `usage` before it is called unreachable


@click.group()
def keys() -> None:
    """Create, list, revoke and rotate API keys; show what a key used."""


def _models(text: str | None) -> tuple[str, ...]:
    """`a, b,c` as model ids; none (every model) when not given."""
    return tuple(m.strip() for m in (text or "").split(",") if m.strip())


def _day(epoch: float | None) -> str:
    """The last UTC day an expiry leaves a key working, as it was given to --expires."""
    return "-" if epoch is None else time.strftime("%Y-%m-%d", time.gmtime(epoch - 1))


def _usd(amount: float) -> str:
    """Cents when that is exact, else as many digits as a fraction of a cent needs."""
    return f"${amount:.2f}" if round(amount, 2) == amount else f"${amount:g}"


def _limits(k: KeyInfo) -> str:
    parts = [f"{what}={n}" for what, n in (("rpm", k.rpm), ("tpm", k.tpm)) if n is not None]
    if k.max_parallel is not None:
        parts.append(f"parallel={k.max_parallel}")
    return ",".join(parts) or "-"


def _budget(k: KeyInfo) -> str:
    return "-" if k.budget_usd is None else f"{_usd(k.budget_usd)}/{k.budget_period}"


def _key_row(k: KeyInfo, now: float) -> list[str]:
    return [
        k.name,
        k.shown + "…",
        k.status(now),
        ",".join(k.models) or "*",
        _limits(k),
        _budget(k),
        _day(k.expires_at),
    ]


def _show_secret(verb: str, info: KeyInfo, secret: str, as_json: bool) -> None:
    """The secret, once: on a line of its own, or as `key` in the JSON object's one line
    (the note then goes to stderr, so stdout stays the object alone)."""
    if as_json:
        click.echo(NOT_AGAIN, err=True)
        click.echo(json.dumps({**info.as_dict(), "key": secret}))
        return
    click.echo(f"{verb} key {info.name} ({info.shown}…)")
    click.echo(secret)
    click.echo(NOT_AGAIN)


@keys.command("create")
@click.argument("name")
@click.option("--models", "models_text", metavar="ID,...", help="Models it may use [all].")
@click.option("--rpm", type=int, help="Requests per minute.")
@click.option("--tpm", type=int, help="Tokens (prompt and completion) per minute.")
@click.option("--max-parallel", type=int, help="Requests running at once.")
@click.option("--budget", type=float, metavar="USD", help="Spend allowed per budget period.")
@click.option(
    "--budget-period",
    default=DEFAULT_PERIOD,
    show_default=True,
    help=f"When the budget resets (UTC): {', '.join(PERIODS)}.",
)
@click.option("--expires", metavar="YYYY-MM-DD", help="Last day it works (UTC).")
@click.option("--json", "as_json", is_flag=True, help="Print the key as one JSON line.")
def create_cmd(
    name: str,
    models_text: str | None,
    rpm: int | None,
    tpm: int | None,
    max_parallel: int | None,
    budget: float | None,
    budget_period: str,
    expires: str | None,
    as_json: bool,
) -> None:
    """Create key NAME and print its secret, once."""
    with _registry() as engine:
        info, secret = create_key(
            engine,
            name,
            models=_models(models_text),
            rpm=rpm,
            tpm=tpm,
            max_parallel=max_parallel,
            budget_usd=budget,
            budget_period=budget_period,
            expires_at=parse_expiry(expires),
        )
    _show_secret("created", info, secret, as_json)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_cmd(as_json: bool) -> None:
    """List every key, revoked and expired ones too; never their secrets."""
    with _registry() as engine:
        infos = list_keys(engine)
    now = time.time()
    if as_json:
        click.echo(json.dumps([k.as_dict(now) for k in infos], indent=2))
        return
    if not infos:
        click.echo("no keys (`irouter keys create NAME` makes one)")
        return
    headers = ["NAME", "KEY", "STATUS", "MODELS", "LIMITS", "BUDGET", "EXPIRES"]
    click.echo(_table(headers, [_key_row(k, now) for k in infos]))


@keys.command("revoke")
@click.argument("name")
def revoke_cmd(name: str) -> None:
    """Revoke key NAME: the API refuses it within a second. Its records stay."""
    with _registry() as engine:
        info = revoke_key(engine, name)
    click.echo(f"revoked key {info.name} ({info.shown}…)")


@keys.command("rotate")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the key as one JSON line.")
def rotate_cmd(name: str, as_json: bool) -> None:
    """Give key NAME a new secret (printed once); the old one stops working."""
    with _registry() as engine:
        info, secret = rotate_key(engine, name)
    _show_secret("rotated", info, secret, as_json)


def read_spend(key: KeyInfo, now: float) -> Spend:
    """The key's budget and its current period's spend, from the Redis at REDIS_URL; the
    amounts None, and why, when Redis cannot be reached (the log's part still stands)."""
    import redis

    from core.settings import Settings
    from tasks.connections import redis_client
    from tasks.tenants import NANO, Tenants

    spend = budget_of(key, now)
    url = Settings.load(os.environ).redis_url
    client = redis_client(url, socket_timeout=REDIS_TIMEOUT)
    try:
        spent, reserved = Tenants(client).spend(key.name, spend.current)
    except redis.RedisError as err:
        return replace(spend, error=f"cannot reach Redis at {url}: {err}")
    finally:
        client.close()
    return replace(spend, spent_usd=spent / NANO, reserved_usd=reserved / NANO)


def _totals_text(t: Totals) -> str:
    return (
        f"{t.requests} requests, {t.prompt_tokens} prompt + {t.completion_tokens} completion "
        f"tokens, {_usd(t.cost_usd)}"
    )


def _usage_table(first: str, groups: tuple[tuple[str, Totals], ...]) -> str:
    headers = [first, "REQUESTS", "PROMPT", "COMPLETION", "COST_USD"]
    rows = [
        [label, str(t.requests), str(t.prompt_tokens), str(t.completion_tokens), f"{t.cost_usd:g}"]
        for label, t in groups
    ]
    return _table(headers, rows)


def _spend_text(s: Spend) -> str:
    budget = "none" if s.budget_usd is None else f"{_usd(s.budget_usd)} per {s.period}"
    if s.error is not None:
        return f"budget {budget}; spend of {s.current} unknown: {s.error}"
    spent, reserved = _usd(s.spent_usd or 0.0), _usd(s.reserved_usd or 0.0)
    return f"budget {budget}; {s.current}: spent {spent}, reserved {reserved} (running)"


def _print_usage(usage: KeyUsage, spend: Spend) -> None:
    since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(usage.since))
    click.echo(f"key {usage.name}, last {usage.days} days (since {since})")
    click.echo(f"total: {_totals_text(usage.total)}")
    if usage.by_model:
        click.echo("\nby model:\n" + _usage_table("MODEL", usage.by_model))
        click.echo("\nby day:\n" + _usage_table("DAY", usage.by_day))
    click.echo("\n" + _spend_text(spend))


@keys.command("usage")
@click.argument("name")
@click.option("--days", type=int, default=DEFAULT_DAYS, show_default=True, help="How far back.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def usage_cmd(name: str, days: int, as_json: bool) -> None:
    """What key NAME used (requests, tokens, cost; in total, by model and by day, from the
    request log), and its current budget period's spend (from Redis)."""
    now = time.time()
    with _registry() as engine:
        key = get_key(engine, name)
        usage = key_usage(engine, name, days, now)
    spend = read_spend(key, now)
    if as_json:
        click.echo(json.dumps(usage_report(usage, spend), indent=2))
        return
    _print_usage(usage, spend)
