"""The Celery side of the router: `celery -A tasks worker -Q <queue>` finds `app` here.

One task, `router.generate(job_id, attempt)`, routed to the queue of the job's backend.
The message carries only the id and attempt; the request lives in the job hash, so no
prompt ever sits in the broker or shows in Flower.
"""

from __future__ import annotations

import sys

from tasks.pools import reexec_for_gevent

reexec_for_gevent(sys.argv)  # before anything opens a socket; see tasks/pools.py

from celery import Celery  # noqa: E402

app: Celery = Celery("tasks")
app.config_from_object("tasks.celeryconfig")

from tasks.generate import generate  # noqa: E402

__all__ = ["app", "generate"]
