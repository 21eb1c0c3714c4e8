"""Task-layer fixtures: the session's real Redis, flushed before each test."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from workers.protocol import ChatJob, Sampling


def new_job(job_id: str = "job_1") -> ChatJob:
    return ChatJob(
        id=job_id,
        model="m",
        backend="local",
        kind="local",
        upstream_model="m",
        messages=[{"role": "user", "content": "hi"}],
        sampling=Sampling(max_tokens=5, stop=("x",)),
        deadline=time.time() + 60,
    )


@pytest.fixture
def make_job() -> Callable[..., ChatJob]:
    """A small ChatJob factory."""
    return new_job


@pytest.fixture
def r(stack):  # type: ignore[no-untyped-def]
    """A decoded client on a separate database of the session's redis-server, flushed."""
    from tasks.connections import redis_client

    client = redis_client(stack.redis_url.rsplit("/", 1)[0] + "/5")
    client.flushdb()
    return client
