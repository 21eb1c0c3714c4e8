"""A worker killed mid-job: the job is redelivered without waiting for the broker's
visibility timeout, readers see `restart`, and the final text is complete and correct.

Runs on its own queue with its own two workers, so the session's worker is never killed.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from registry.crud import add_backend, add_model

QUEUE = "local-redelivery"
MODEL = "smollm2-redelivery"
PROMPT = [{"role": "user", "content": "Write a long poem about the sea and the sky."}]
BODY = {"model": MODEL, "messages": PROMPT, "max_tokens": 80, "temperature": 0}


@pytest.fixture(scope="module")
def kill_queue(registry_db, start_worker):  # type: ignore[no-untyped-def]
    """A second local backend on its own queue, served by two fresh workers."""
    add_backend(registry_db, "local-redelivery", "local", queue=QUEUE)
    add_model(registry_db, MODEL, "local-redelivery", upstream="smollm2-135m")
    workers = [start_worker(QUEUE, concurrency=2), start_worker(QUEUE, concurrency=2)]
    time.sleep(1.5)  # the API's registry snapshot refreshes every second
    return workers


def kill_the_worker_running(stack, start_worker, job_id: str) -> None:
    """SIGKILL the process that holds `job_id` once it has streamed a few tokens, then
    start a replacement so that the queue keeps two workers."""
    r = stack.redis()
    give_up = time.monotonic() + 60
    while r.xlen(f"router:job:{job_id}:events") < 5:
        assert time.monotonic() < give_up, "the job never started streaming"
        time.sleep(0.05)
    worker_id = r.hget(f"router:job:{job_id}", "worker")
    pid = int(r.hget(f"router:worker:{worker_id}", "pid"))
    os.kill(pid, signal.SIGKILL)
    start_worker(QUEUE, concurrency=2)


def test_killed_worker_job_is_redelivered_and_completes(
    kill_queue, stack, start_worker, http: httpx.Client, openai_client
) -> None:
    expected = openai_client.chat.completions.create(**{**BODY, "model": "smollm2-135m"})
    job_id = http.post("/v1/jobs", json=BODY).json()["id"]
    started = time.monotonic()
    kill_the_worker_running(stack, start_worker, job_id)
    events: list[tuple[str, dict]] = []
    with http.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
        kind = ""
        for line in resp.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, httpx.Response(200, content=line[6:]).json()))
    kinds = [k for k, _ in events]
    assert kinds.count("restart") == 1
    assert kinds[-1] == "done"
    after_restart = events[kinds.index("restart") + 1 :]
    text = "".join(e["delta"] for k, e in after_restart if k == "token")
    assert text == expected.choices[0].message.content
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["attempt"] == 2
    assert job["text"] == text
    assert time.monotonic() - started < 60  # not the broker's one-hour visibility timeout


def test_streaming_client_gets_the_full_text_across_a_worker_kill(
    kill_queue, stack, start_worker, openai_client, api_url: str
) -> None:
    expected = openai_client.chat.completions.create(**{**BODY, "model": "smollm2-135m"})
    stream = openai_client.chat.completions.with_raw_response.create(**BODY, stream=True)
    job_id = stream.headers["x-router-job-id"]
    chunks = stream.parse()
    parts: list[str] = []
    killed = False
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
            if not killed:
                kill_the_worker_running(stack, start_worker, job_id)
                killed = True
    assert killed
    assert "".join(parts) == expected.choices[0].message.content
    assert httpx.get(f"{api_url}/v1/jobs/{job_id}").json()["attempt"] == 2
