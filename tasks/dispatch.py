"""Putting jobs on their queue: the Celery task message, built here and LPUSHed by us.

The message is exactly what `send_task` would put on the Redis list (Celery's protocol 2
in kombu's Redis envelope, tested against kombu's own in tests/tasks/test_dispatch.py), so
any `celery -A tasks worker -Q <queue>` runs it. Building it ourselves skips what kombu does
on every publish (a producer and a Redis client per call, an exchange lookup): that was
42% of the API's CPU in the first profile of the hot path (docs/benchmarks.md). The API
pushes it in the same Lua call that creates the job (tasks/lua/create.lua), so a job never
exists without its message.

Only the id travels: the request stays in the job hash, out of the broker and Flower.
"""

from __future__ import annotations

import base64
import os
import socket
import uuid

import orjson
import redis

from tasks.keys import task_name

#: The embed part of a protocol-2 body: no callbacks, errbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"


def task_message(job_id: str, attempt: int, queue: str) -> bytes:
    """The Redis-list entry of `router.generate.<queue>(job_id, attempt)`."""
    task_id = str(uuid.uuid4())
    body = orjson.dumps([[job_id, attempt], {}, _EMBED])
    argsrepr = f"({job_id!r}, {attempt})"
    headers: dict[str, object] = {
        "lang": "py",
        "task": task_name(queue),
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": argsrepr,
        "kwargsrepr": "{}",
        "origin": _ORIGIN,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    properties = {
        "correlation_id": task_id,
        "reply_to": "",
        "argsrepr": argsrepr,
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    return orjson.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        }
    )


def enqueue(client: redis.Redis, job_id: str, attempt: int, queue: str) -> None:
    """Publish `router.generate.<queue>(job_id, attempt)` on `queue` (one LPUSH)."""
    client.lpush(queue, task_message(job_id, attempt, queue))
