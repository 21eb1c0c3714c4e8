"""A worker's background threads (event publisher, heartbeat, job stopper) must not die
quietly: a worker whose publisher is dead would claim jobs and never finish them. Each runs
its loop through `run_guarded`, which tells `on_death` why the thread ended (the worker's
default logs it and exits, to be restarted: tasks/runtime.py).
"""

from __future__ import annotations

from collections.abc import Callable

#: Told the name of a background thread that died and why.
ThreadDeath = Callable[[str, BaseException], None]


def run_guarded(name: str, loop: Callable[[], None], on_death: ThreadDeath | None) -> None:
    """Run `loop`; if it raises, tell `on_death` (None: let the thread die, its exception
    printed, as in tests that drive one part alone)."""
    try:
        loop()
    except Exception as exc:  # a bug or data we cannot read: tell the owner, or die loudly
        if on_death is None:
            raise
        on_death(name, exc)
