"""The task message we LPUSH is the one Celery's own `send_task` puts on the list."""

from __future__ import annotations

import base64

import orjson
from celery import Celery

from tasks.dispatch import enqueue, task_message
from tasks.jobs import JobStore


def kombu_message(r, job_id: str, attempt: int, queue: str) -> dict:  # type: ignore[no-untyped-def]
    """What `send_task` with the project's settings puts on `queue`."""
    url = r.connection_pool.connection_kwargs
    app = Celery("tasks", set_as_current=False)
    app.config_from_object("tasks.celeryconfig")
    app.conf.broker_url = f"redis://{url['host']}:{url['port']}/{url['db']}"
    app.conf.broker_transport = "redis"
    with app.producer_pool.acquire(block=True) as producer:
        app.send_task(
            f"router.generate.{queue}",
            (job_id, attempt),
            queue=queue,
            producer=producer,
            argsrepr=f"({job_id!r}, {attempt})",
            ignore_result=True,
        )
    return dict(orjson.loads(r.rpop(queue)))


def ids_out(message: dict) -> dict:
    """The message with its random ids and the publishing process named alike."""
    out = orjson.loads(orjson.dumps(message))
    out["body"] = orjson.loads(base64.b64decode(out["body"]))
    for name in ("id", "root_id", "origin"):
        out["headers"][name] = "*"
    for name in ("correlation_id", "delivery_tag", "reply_to"):
        out["properties"][name] = "*"
    return dict(out)


def test_our_message_is_celerys_own(r) -> None:
    ours = orjson.loads(task_message("job_abc", 2, "openai"))
    theirs = kombu_message(r, "job_abc", 2, "openai")
    assert ids_out(ours) == ids_out(theirs)
    assert (
        ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]
    )


def test_every_message_has_its_own_task_id(r) -> None:
    a, b = (orjson.loads(task_message("job_abc", 1, "openai")) for _ in range(2))
    assert a["headers"]["id"] != b["headers"]["id"]
    assert a["properties"]["delivery_tag"] != b["properties"]["delivery_tag"]


def test_enqueue_pushes_where_a_worker_pops(r) -> None:
    enqueue(r, "job_abc", 1, "grok")
    message = orjson.loads(r.rpop("grok"))
    assert orjson.loads(base64.b64decode(message["body"]))[0] == ["job_abc", 1]
    assert message["headers"]["task"] == "router.generate.grok"


def test_create_pushes_the_message_with_the_job_and_not_on_a_replay(r, make_job) -> None:
    store = JobStore(r, job_ttl=60)
    message = task_message("job_1", 1, "openai")
    assert store.create(make_job(), "openai", idempotency_key="k", message=message) == "job_1"
    assert r.lrange("openai", 0, -1) == [message.decode()]
    store.create(make_job(), "openai", idempotency_key="k", message=task_message("job_1", 1, "x"))
    assert r.llen("openai") == 1
