"""`models` and `backends` click groups: list, add and remove registry entries, and set a
model's routing policy, fallbacks and extra deployments.

The top-level `irouter` command adds both groups. Each command opens the registry at
`DATABASE_URL` (default `.run/router.db`), creating and seeding it on a fresh machine.
Errors print one line and exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import click
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from registry.crud import (
    DEFAULT_CONTEXT_WINDOW,
    DEFAULT_DEPLOYMENT_PRIORITY,
    DEFAULT_MAX_TOKENS,
    add_backend,
    add_deployment,
    add_model,
    remove_deployment,
    remove_model,
    set_backend_enabled,
    set_model,
)
from registry.db import database_url, init_db, make_engine
from registry.errors import RegistryError
from registry.models import KINDS, POLICIES
from registry.queries import DeploymentInfo, ModelRoute, load_snapshot
from registry.seed import load_seed


class CliError(click.ClickException):
    """A one-line `Error: ...` on stderr and exit status 2, no traceback."""

    exit_code = 2


@contextmanager
def _registry() -> Iterator[Engine]:
    """An initialised engine; registry and database errors become CliError.

    The env sync of seeded backends is left to server start: the CLI's shell may lack the
    server's keys, and a sync here would also undo `backends disable` at once.
    """
    engine = make_engine(database_url(os.environ))
    try:
        init_db(engine, os.environ, sync=False)
        yield engine
    except RegistryError as err:
        raise CliError(str(err)) from err
    except SQLAlchemyError as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CliError(f"database error at {engine.url!r}: {first_line}") from err
    finally:
        engine.dispose()


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    cells = [headers, *rows]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _price(p: float) -> str:
    return f"{p:.2f}" if round(p, 2) == p else f"{p:g}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _extra(d: DeploymentInfo, route: ModelRoute) -> str:
    """One extra deployment in a table cell, no spaces: `llm-d[p1,w2,other-name,off]`."""
    parts = [f"p{d.priority}"]
    if d.weight != 1:
        parts.append(f"w{d.weight:g}")
    if d.upstream != route.primary.upstream:
        parts.append(d.upstream)
    if not d.enabled:
        parts.append("off")
    return f"{d.backend}[{','.join(parts)}]"


def _model_row(r: ModelRoute) -> list[str]:
    extras = [_extra(d, r) for d in r.deployments[1:]]
    return [
        r.id,
        r.primary.backend,
        r.primary.upstream,
        str(r.context_window),
        str(r.max_tokens),
        _price(r.input_price),
        _price(r.output_price),
        ",".join(r.aliases) or "-",
        _yes(r.enabled),
        r.policy,
        ",".join(r.fallbacks) or "-",
        ",".join(extras) or "-",
    ]


@click.group()
def models() -> None:
    """List, add and remove models; set their policy, fallbacks and deployments."""


@models.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include models of disabled backends.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_models(show_all: bool, as_json: bool) -> None:
    """List models (by default only those whose backend is enabled)."""
    with _registry() as engine:
        routes = load_snapshot(engine).models(enabled_only=not show_all)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in routes], indent=2))
        return
    if not routes:
        click.echo("no models" + ("" if show_all else " (--all includes disabled backends)"))
        return
    headers = ["ID", "BACKEND", "UPSTREAM", "CONTEXT", "MAX_TOKENS", "IN$/1M", "OUT$/1M"]
    headers += ["ALIASES", "ENABLED", "POLICY", "FALLBACKS", "DEPLOYMENTS"]
    click.echo(_table(headers, [_model_row(r) for r in routes]))


@models.command("add")
@click.argument("model_id", metavar="ID")
@click.option("--backend", required=True, help="Backend that serves the model.")
@click.option("--upstream", help="Name the backend knows the model by [default: ID].")
@click.option("--context-window", type=int, default=DEFAULT_CONTEXT_WINDOW, show_default=True)
@click.option("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, show_default=True)
@click.option("--input-price", type=float, default=0.0, help="USD per 1M input tokens.")
@click.option("--output-price", type=float, default=0.0, help="USD per 1M output tokens.")
@click.option("--alias", "aliases", multiple=True, help="Another name for the model; repeatable.")
def add_model_cmd(
    model_id: str,
    backend: str,
    upstream: str | None,
    context_window: int,
    max_tokens: int,
    input_price: float,
    output_price: float,
    aliases: tuple[str, ...],
) -> None:
    """Add model ID served by --backend."""
    with _registry() as engine:
        route = add_model(
            engine,
            model_id,
            backend,
            upstream=upstream,
            context_window=context_window,
            max_tokens=max_tokens,
            input_price=input_price,
            output_price=output_price,
            aliases=aliases,
        )
    d = route.primary
    click.echo(f"added model {route.id} (backend {d.backend}, upstream {d.upstream})")
    if not route.enabled:
        click.echo(f"note: backend {d.backend} is disabled; the model is hidden until enabled")


@models.command("remove")
@click.argument("model_id", metavar="ID")
def remove_model_cmd(model_id: str) -> None:
    """Remove model ID, its aliases and deployments; other models stop falling back to it."""
    with _registry() as engine:
        changed = remove_model(engine, model_id)
    click.echo(f"removed model {model_id}")
    if changed:
        click.echo(f"note: dropped {model_id} from the fallbacks of {', '.join(changed)}")


@models.command("set")
@click.argument("model_id", metavar="ID")
@click.option(
    "--fallback",
    "fallbacks",
    multiple=True,
    help="Model (id or alias) to try when ID cannot serve; repeatable, in order. "
    "Replaces the current list.",
)
@click.option("--no-fallbacks", is_flag=True, help="Clear the fallback list.")
@click.option("--policy", help=f"How to pick a deployment: {', '.join(POLICIES)}.")
def set_model_cmd(
    model_id: str, fallbacks: tuple[str, ...], no_fallbacks: bool, policy: str | None
) -> None:
    """Set the routing policy and/or fallbacks of model ID."""
    if fallbacks and no_fallbacks:
        raise CliError("--fallback and --no-fallbacks exclude each other")
    if not (fallbacks or no_fallbacks or policy is not None):
        raise CliError("nothing to set: give --policy, --fallback or --no-fallbacks")
    chain = () if no_fallbacks else (fallbacks or None)
    with _registry() as engine:
        route = set_model(engine, model_id, policy=policy, fallbacks=chain)
    fallback_text = ", ".join(route.fallbacks) or "none"
    click.echo(f"model {route.id}: policy {route.policy}, fallbacks {fallback_text}")


@models.command("deploy")
@click.argument("model_id", metavar="ID")
@click.option("--backend", required=True, help="Another backend that serves the model.")
@click.option("--upstream", help="Name that backend knows the model by [default: ID's].")
@click.option(
    "--priority",
    type=int,
    default=DEFAULT_DEPLOYMENT_PRIORITY,
    show_default=True,
    help="Lower is tried first; the primary is 0.",
)
@click.option("--weight", type=float, default=1.0, show_default=True, help="Share if weighted.")
def deploy_cmd(
    model_id: str, backend: str, upstream: str | None, priority: int, weight: float
) -> None:
    """Serve model ID on one more --backend."""
    with _registry() as engine:
        route = add_deployment(engine, model_id, backend, upstream, priority, weight)
    d = next(d for d in route.deployments if d.backend == backend)
    click.echo(
        f"deployed {route.id} on {d.backend} "
        f"(upstream {d.upstream}, priority {d.priority}, weight {d.weight:g})"
    )
    if not d.enabled:
        click.echo(
            f"note: backend {d.backend} is disabled; this deployment is unused until enabled"
        )


@models.command("undeploy")
@click.argument("model_id", metavar="ID")
@click.option("--backend", required=True, help="The backend to stop serving ID on.")
def undeploy_cmd(model_id: str, backend: str) -> None:
    """Stop serving model ID on --backend (not its primary backend)."""
    with _registry() as engine:
        route = remove_deployment(engine, model_id, backend)
    click.echo(f"undeployed {route.id} from {backend}")


@click.group()
def backends() -> None:
    """List, add, enable and disable backends."""


@backends.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_backends(as_json: bool) -> None:
    """List every backend, enabled or not."""
    with _registry() as engine:
        infos = load_snapshot(engine).backends()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(b) for b in infos], indent=2))
        return
    headers = ["NAME", "KIND", "QUEUE", "BASE_URL", "KEY_ENV", "ENABLED"]
    rows = [
        [b.name, b.kind, b.queue, b.base_url or "-", b.api_key_env or "-", _yes(b.enabled)]
        for b in infos
    ]
    click.echo(_table(headers, rows))


@backends.command("add")
@click.argument("name")
@click.option("--kind", required=True, help=f"One of: {', '.join(KINDS)}.")
@click.option("--queue", help="Celery queue its workers consume [default: NAME].")
@click.option("--base-url", help="API base URL (providers, llm-d).")
@click.option("--key-env", "api_key_env", help="NAME of the env var holding the API key.")
@click.option("--disabled", is_flag=True, help="Add it disabled.")
def add_backend_cmd(
    name: str,
    kind: str,
    queue: str | None,
    base_url: str | None,
    api_key_env: str | None,
    disabled: bool,
) -> None:
    """Add backend NAME of --kind."""
    with _registry() as engine:
        info = add_backend(engine, name, kind, queue, base_url, api_key_env, not disabled)
    state = "enabled" if info.enabled else "disabled"
    click.echo(f"added backend {info.name} ({info.kind}, queue {info.queue}, {state})")


def _set_enabled(name: str, enabled: bool) -> None:
    with _registry() as engine:
        info = set_backend_enabled(engine, name, enabled)
    click.echo(f"backend {info.name} {'enabled' if info.enabled else 'disabled'}")
    gate = load_seed().env_gates().get(name)
    if gate:
        click.echo(f"note: the server re-syncs {name} from ${gate} each time it starts")


@backends.command("enable")
@click.argument("name")
def enable_backend(name: str) -> None:
    """Enable backend NAME: its models join the model list."""
    _set_enabled(name, True)


@backends.command("disable")
@click.argument("name")
def disable_backend(name: str) -> None:
    """Disable backend NAME: its models leave the model list."""
    _set_enabled(name, False)
