"""Every backend kind the workers implement, and what each one is, in one table. Data only:
the backend classes are named, not imported, so the registry and the API read it freely.

    KINDS["llm-d"].announces      # workers announce the models they serve, one by one
    kind_info("local").factory    # "workers.local:LocalBackend", built by workers.base

A kind is a worker module plus a few facts the other parts act on:

- `factory`: the class (`module:Name`) whose `from_env(env, concurrency)` builds the
  backend; imported only when a worker builds it, so a provider worker never loads torch.
- `pool`: the Celery pool its workers run (`threads` for the local model, whose torch calls
  release the GIL; `gevent` for I/O-bound provider calls, a thousand streams a process).
- `announces`: a worker says which models it has (liveness per model, not per queue), so
  the API routes a model only to workers that serve it.
- `discovers`: the models its workers announce join the registry without being added by
  hand (an llm-d cluster's `/v1/models`).
- `own_queue`: each backend of the kind is served on the queue named after it (a provider
  worker refuses a job for another backend); a local queue may serve several models.

Which provider backends exist, and their queues, is `workers/providers.json`; the registry
accepts exactly these kinds; `tests/core/test_kinds.py` ties the table to both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str
    factory: str
    pool: str
    announces: bool = False
    discovers: bool = False
    own_queue: bool = True


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("local", "workers.local:LocalBackend", "threads", announces=True, own_queue=False),
        Kind("openai-compatible", "workers.openai_compat:OpenAICompatBackend", "gevent"),
        Kind("anthropic", "workers.anthropic:AnthropicBackend", "gevent"),
        Kind("google", "workers.google:GoogleBackend", "gevent"),
        Kind("llm-d", "workers.llmd:LlmdBackend", "gevent", announces=True, discovers=True),
    )
}

#: The kind of a queue no configuration names: a local model's.
DEFAULT_KIND = "local"


def kind_info(kind: str) -> Kind | None:
    """The table's row for `kind`, or None for a kind no worker implements."""
    return KINDS.get(kind)


def announces(kind: str) -> bool:
    """Whether workers of `kind` announce each model they serve."""
    info = KINDS.get(kind)
    return info is not None and info.announces


def discovers(kind: str) -> bool:
    """Whether the models workers of `kind` announce join the registry by themselves."""
    info = KINDS.get(kind)
    return info is not None and info.discovers
