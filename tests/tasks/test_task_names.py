"""Task names tell backends apart in Flower; the message carries ids only."""

from __future__ import annotations

from tasks.keys import KNOWN_QUEUES, TASK_NAME, task_name


def test_known_queues_get_their_own_task_name() -> None:
    assert task_name("openai") == "router.generate.openai"
    assert task_name("local-mps") == "router.generate.local-mps"
    assert task_name("my-cluster") == TASK_NAME  # operator-added queues: the generic task


def test_the_worker_registers_every_name() -> None:
    import tasks.generate  # noqa: F401 - registers the tasks
    from tasks.celery import app

    for queue in KNOWN_QUEUES:
        assert task_name(queue) in app.tasks
    assert TASK_NAME in app.tasks
