"""Pick the worker pool from the queues a worker consumes, so the bare command is right:

    celery -A tasks worker -Q local-mps                  -> threads (torch releases the GIL)
    celery -A tasks worker -Q openai,anthropic,google    -> gevent  (I/O-bound, 1000 streams)

An explicit `-P/--pool` always wins. gevent must monkey-patch before any socket or thread
exists, and Celery does that only for a `-P gevent` on the command line; so a worker whose
queues imply gevent re-executes itself once with `-P gevent` added, before it has opened
anything, and Celery patches it properly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from core.kinds import KINDS
from tasks.keys import LOCAL_QUEUE
from workers.providers import queue_kind

DEFAULT_CONCURRENCY = {"threads": 8, "gevent": 1000}  # threads: one per batch slot


def _option(argv: Sequence[str], short: str, long: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg in (short, long) and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(long + "="):
            return arg.split("=", 1)[1]
        if arg.startswith(short) and len(arg) > len(short) and not arg.startswith("--"):
            return arg[len(short) :]
    return None


def pool_for_queues(queues: Sequence[str]) -> str:
    """gevent only when every queue's kind runs on gevent (the provider queues of
    providers.json); threads for anything local."""
    names = [q.strip() for q in queues if q.strip()]
    pools = {KINDS[queue_kind(name, {})].pool for name in names}
    return "gevent" if pools == {"gevent"} else "threads"


def pool_for_argv(argv: Sequence[str]) -> str:
    """The pool a `celery ... worker` command line should run with."""
    explicit = _option(argv, "-P", "--pool")
    if explicit:
        return explicit
    if "worker" not in argv:
        return "threads"
    queues = _option(argv, "-Q", "--queues") or LOCAL_QUEUE
    return pool_for_queues(queues.split(","))


def gevent_argv(argv: Sequence[str]) -> list[str] | None:
    """The command line to re-run with `-P gevent`, when the queues imply it and no pool
    was given; None otherwise."""
    implied = "worker" in argv and _option(argv, "-P", "--pool") is None
    if implied and pool_for_argv(argv) == "gevent":
        return [sys.executable, "-m", "celery", *argv[1:], "-P", "gevent"]
    return None


def reexec_for_gevent(argv: Sequence[str]) -> None:
    """Replace this process with the same worker command plus `-P gevent`, if implied."""
    again = gevent_argv(argv)
    if again is not None:
        os.execv(again[0], again)
