"""Putting jobs on their queue. The API builds its own Celery client bound to its
configured Redis (the Flask `examples/celery` pattern); workers use `tasks.app`.
"""

from __future__ import annotations

from celery import Celery

from tasks.keys import task_name


def make_celery(broker_url: str) -> Celery:
    """A Celery client with the project's settings, publishing to `broker_url`."""
    client = Celery("tasks", set_as_current=False)
    client.config_from_object("tasks.celeryconfig")
    client.conf.broker_url = broker_url
    return client


def enqueue(celery: Celery, job_id: str, attempt: int, queue: str) -> None:
    """Publish `router.generate.<queue>(job_id, attempt)` on `queue`, pooled producer.

    Only the id travels: the request stays in the job hash, out of the broker and Flower.
    """
    with celery.producer_pool.acquire(block=True) as producer:
        celery.send_task(
            task_name(queue),
            (job_id, attempt),
            queue=queue,
            producer=producer,
            argsrepr=f"({job_id!r}, {attempt})",
            ignore_result=True,
        )
