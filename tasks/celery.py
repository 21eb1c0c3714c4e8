"""The Celery app. `celery -A tasks worker -Q <queue>` finds it here: Celery looks in the
`tasks` package for `app`, then in its `tasks.celery` module.

Importing this module is what makes a process a worker (or Flower): it re-executes a
provider-only worker under gevent before anything opens a socket (tasks/pools.py), builds
the app, and registers the task with its worker lifecycle hooks (tasks/generate.py). The
API and the CLI never import it; they put jobs on queues themselves (tasks/dispatch.py).
"""

from __future__ import annotations

import sys

from tasks.pools import reexec_for_gevent

reexec_for_gevent(sys.argv)  # before anything opens a socket; see tasks/pools.py

from celery import Celery  # noqa: E402

app: Celery = Celery("tasks")
app.config_from_object("tasks.celeryconfig")

# registers the task and the worker hooks; a plain import, so either module may come first
import tasks.generate  # noqa: E402, F401
