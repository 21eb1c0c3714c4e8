"""Pick the worker pool from the queues a worker consumes, so the bare command is right:

    celery -A tasks worker -Q local-mps                  -> threads (torch releases the GIL)
    celery -A tasks worker -Q openai,anthropic,google    -> gevent  (I/O-bound, 1000 streams)

An explicit `-P/--pool` always wins. gevent must monkey-patch before sockets and threads
exist, which is why Celery itself reads `-P` from argv; we do the same for `-Q`.
"""

from __future__ import annotations

from collections.abc import Sequence

from tasks.keys import LOCAL_QUEUE, PROVIDER_QUEUES

DEFAULT_CONCURRENCY = {"threads": 4, "gevent": 1000}


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
    """gevent only when every queue is a provider queue; threads for anything local."""
    names = [q.strip() for q in queues if q.strip()]
    return "gevent" if names and set(names) <= PROVIDER_QUEUES else "threads"


def pool_for_argv(argv: Sequence[str]) -> str:
    """The pool a `celery ... worker` command line should run with."""
    explicit = _option(argv, "-P", "--pool")
    if explicit:
        return explicit
    if "worker" not in argv:
        return "threads"
    queues = _option(argv, "-Q", "--queues") or LOCAL_QUEUE
    return pool_for_queues(queues.split(","))


def patch_if_gevent(argv: Sequence[str]) -> None:
    """Monkey-patch for gevent when the command line implies it and Celery will not."""
    implied = "worker" in argv and _option(argv, "-P", "--pool") is None
    if implied and pool_for_argv(argv) == "gevent":
        from gevent import monkey

        monkey.patch_all()
