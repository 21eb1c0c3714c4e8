"""The one task, how jobs are put on their queue, and the worker lifecycle hooks.

`celeryd_after_setup` (logging is up, consuming has not begun) builds the backends a worker's
queues need (the local model, loaded once; provider clients; the llm-d cluster poller) and
then starts the heartbeat, so a worker is announced only when it can serve. A backend that
cannot be built (a missing package, a bad model path) is announced as failed, with its
reason, and its queues are left to other workers: the API then says why, not "no worker".
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import orjson
from celery import signals
from celery.backends.base import DisabledBackend

from core.logs import celery_json_logging, task_log_context_begin, task_log_context_end
from tasks.celery import app
from tasks.consumer import watch_consumer
from tasks.dispatch import enqueue
from tasks.execute import run_job
from tasks.keys import KNOWN_QUEUES, TASK_NAME, task_name
from tasks.liveness import Requeued
from tasks.runtime import runtime

log = logging.getLogger(__name__)

# ROUTER_LOG_JSON on: JSON log lines, naming the job and its request while a task runs
signals.after_setup_logger.connect(celery_json_logging)
signals.after_setup_task_logger.connect(celery_json_logging)
signals.task_prerun.connect(task_log_context_begin)
signals.task_postrun.connect(task_log_context_end)


@app.task(name=TASK_NAME, ignore_result=True)
def generate(job_id: str, attempt: int = 1) -> None:
    """Run one delivery of a job (see tasks.execute.run_job)."""
    run_job(runtime(), job_id, attempt)


def _named(queue: str) -> None:
    """The same task under `router.generate.<queue>`, so Flower shows which backend."""

    def run(job_id: str, attempt: int = 1) -> None:
        run_job(runtime(), job_id, attempt)

    run.__doc__ = f"Run one delivery of a job on queue `{queue}`."
    app.task(name=task_name(queue), ignore_result=True)(run)


for _queue in sorted(KNOWN_QUEUES):
    _named(_queue)


def _requeue(job: Requeued) -> None:
    enqueue(runtime().redis, job.job_id, job.attempt, job.queue)


@signals.celeryd_after_setup.connect
def _on_worker_setup(instance: Any = None, **_: Any) -> None:
    worker = instance
    queues = sorted(worker.app.amqp.queues.consume_from or ["celery"])
    # Results are never stored (ignore_result), but Celery still builds the disabled result
    # backend once per thread, i.e. once per task under gevent: give our tasks one for good.
    disabled = DisabledBackend(worker.app)
    for name, task in worker.app.tasks.items():
        if name.startswith(TASK_NAME):
            task.backend = disabled
    for name in ("httpx", "httpx2"):  # the SDKs log one INFO line per upstream request
        logging.getLogger(name).setLevel(logging.WARNING)
    rt = runtime()
    # Celery's "received" and "succeeded" lines, two per task: 3% of a provider worker's
    # CPU, and Flower shows the same (ROUTER_TASK_LOG on keeps them). Failures still log.
    if not rt.settings.task_log:
        for name in ("celery.worker.strategy", "celery.app.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
    # Build every backend now: a broken one (a missing package, a bad model path) fails
    # here, where it is announced with its reason, instead of once per request. The local
    # backend decodes a batch as wide as the threads that feed it (unless LOCAL_MAX_BATCH
    # says otherwise).
    failed = rt.prepare(queues, concurrency=worker.concurrency)
    serving = [q for q in queues if q not in failed]
    for queue in failed:
        worker.app.amqp.queues.deselect(queue)  # leave its jobs to a worker that can serve
    pool = getattr(worker.pool_cls, "__module__", "").rsplit(".", 1)[-1]
    info = {
        "hostname": socket.gethostname(),
        "pid": str(os.getpid()),
        "pool": pool,
        "concurrency": str(worker.concurrency),
        "started": f"{time.time():.3f}",
        "failed": orjson.dumps(failed).decode() if failed else "",
    }
    watch_consumer(rt)  # a consumer that stops polling is announced off its queues, restarted
    rt.start_heartbeat(serving, info, _requeue)
    if failed:
        log.error(
            "worker %s serving %s; FAILED at start: %s",
            rt.worker_id,
            ",".join(serving) or "nothing",
            "; ".join(f"{q}: {why}" for q, why in failed.items()),
        )
    else:
        log.info("worker %s serving %s", rt.worker_id, ",".join(queues))


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    runtime().stop()
