"""The worker pool follows the queues so the bare `celery -A tasks worker -Q ...` is right."""

from __future__ import annotations

import pytest

from tasks.pools import gevent_argv, pool_for_argv, pool_for_queues


@pytest.mark.parametrize(
    ("argv", "pool"),
    [
        (["celery", "-A", "tasks", "worker", "-Q", "local-mps"], "threads"),
        (["celery", "-A", "tasks", "worker"], "threads"),
        (["celery", "-A", "tasks", "worker", "-Q", "openai,anthropic,google"], "gevent"),
        (["celery", "-A", "tasks", "worker", "--queues=llm-d"], "gevent"),
        (["celery", "-A", "tasks", "worker", "-Qopenai"], "gevent"),
        (["celery", "-A", "tasks", "worker", "-Q", "openai,local-mps"], "threads"),
        (["celery", "-A", "tasks", "worker", "-Q", "openai", "-P", "threads"], "threads"),
        (["celery", "-A", "tasks", "worker", "-Q", "local-mps", "--pool=solo"], "solo"),
        (["gunicorn", "api:create_app()"], "threads"),
    ],
)
def test_pool_for_argv(argv: list[str], pool: str) -> None:
    assert pool_for_argv(argv) == pool


def test_custom_queues_are_treated_as_local() -> None:
    assert pool_for_queues(["my-gpu-box"]) == "threads"
    assert pool_for_queues([]) == "threads"


def test_only_an_implied_gevent_worker_is_re_executed() -> None:
    bare = ["/x/celery", "-A", "tasks", "worker", "-Q", "openai"]
    again = gevent_argv(bare)
    assert again is not None and again[1:] == ["-m", "celery", *bare[1:], "-P", "gevent"]
    assert gevent_argv(again[2:]) is None  # the re-run has -P: no loop
    assert gevent_argv(["/x/celery", "-A", "tasks", "worker", "-Q", "local-mps"]) is None
    assert gevent_argv(["/x/celery", "-A", "tasks", "flower"]) is None
