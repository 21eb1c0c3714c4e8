"""Importing the shared modules of `tasks` (what the API and the CLI use) loads no worker
start-up code: no Celery app, no task, no signal hooks, no gevent re-exec."""

from __future__ import annotations

import subprocess
import sys

import pytest

WORKER_ONLY = ("celery", "tasks.celery", "tasks.generate", "tasks.runtime", "gevent")


def imported_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after `statement`."""
    code = f"{statement}\nimport sys\nprint('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "statement",
    [
        "import tasks.keys",
        "import tasks, tasks.jobs, tasks.liveness, tasks.health, tasks.dispatch, tasks.events",
        "from api import create_app",
    ],
)
def test_shared_modules_load_no_worker_code(statement: str) -> None:
    assert imported_after(statement).isdisjoint(WORKER_ONLY)


def test_celery_finds_the_app_as_typed() -> None:
    """`celery -A tasks` resolves to the app in tasks.celery, with the task registered."""
    code = (
        "from celery.app.utils import find_app\n"
        "app = find_app('tasks')\n"
        "import tasks.celery\n"
        "assert app is tasks.celery.app, app\n"
        "assert 'router.generate' in app.tasks\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
