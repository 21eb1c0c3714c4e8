"""A reader that follows a job it did not start never cancels it for want of a worker."""

from __future__ import annotations

import time

from tasks.jobs import JobStore
from tasks.keys import JobStatus
from workers.protocol import ChatJob


def test_follower_of_a_queued_job_waits_for_the_deadline_not_the_worker_wait(app, client) -> None:
    store: JobStore = app.extensions["services"].jobs
    job = ChatJob(
        id="job_f0110e",
        model="m",
        backend="b",
        kind="local",
        upstream_model="m",
        messages=[{"role": "user", "content": "hi"}],
        deadline=time.time() + 3,
    )
    store.create(job, "queue-without-workers")
    started = time.monotonic()
    body = client.get("/v1/jobs/job_f0110e/events").get_data(as_text=True)
    waited = time.monotonic() - started
    assert waited >= 2.5  # WORKER_WAIT is 1 s: a follower does not give up then
    assert "event: error" in body and '"code":"timeout"' in body
    rec = store.record("job_f0110e")
    assert rec is not None and rec.status is JobStatus.CANCELLED  # expired at its deadline
