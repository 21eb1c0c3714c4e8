"""Job and event ids are checked before any Redis call: a key that is not a job id is a 404,
an event id that is not ASCII `<ms>-<seq>` a 400, never a 500 or a broken stream. And the
Idempotency-Key TTL is the configured one (ROUTER_IDEMPOTENCY_TTL)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tasks import keys

SHORT = {
    "model": "smollm2-135m",
    "messages": [{"role": "user", "content": "Say hi."}],
    "max_tokens": 2,
    "temperature": 0,
}


@pytest.fixture
def bare(stack: Any) -> Any:
    """A client of an app on the session's Redis that needs no worker."""
    from api import create_app

    app = create_app({"REDIS_URL": stack.redis_url, "DATABASE_URL": stack.db_url, "TESTING": True})
    return app.test_client()


@pytest.fixture
def finished_job(stack: Any) -> Iterator[str]:
    """A cancelled job written straight into Redis: its hash and its one terminal event."""
    job_id = f"job_{uuid.uuid4().hex[:24]}"
    r = stack.redis()
    now = time.time()
    fields = {"id": job_id, "status": "cancelled", "model": "smollm2-135m", "backend": "local"}
    fields |= {"queue": "local-mps", "created": f"{now}", "deadline": f"{now + 60}"}
    r.hset(keys.job_key(job_id), mapping=fields)
    r.xadd(keys.events_key(job_id), {"type": "cancelled"})
    yield job_id
    r.delete(keys.job_key(job_id), keys.events_key(job_id))


def not_found(resp: Any) -> dict:
    assert resp.status_code == 404, resp.get_data(as_text=True)
    err = resp.get_json()["error"]
    assert err["code"] == "job_not_found" and err["type"] == "invalid_request_error"
    return err


def test_a_key_that_names_a_jobs_stream_is_not_a_job(bare: Any, finished_job: str) -> None:
    """`job_x:events` would make the job routes read the job's stream as its hash."""
    stream = f"{finished_job}:events"
    not_found(bare.get(f"/v1/jobs/{stream}"))
    not_found(bare.delete(f"/v1/jobs/{stream}"))
    not_found(bare.get(f"/v1/jobs/{stream}/events"))
    assert bare.get(f"/v1/jobs/{finished_job}").get_json()["status"] == "cancelled"


@pytest.mark.parametrize(
    "raw",
    [
        "job_" + "a" * 65,
        "job_",
        "job_0123ABCD",
        "job_\u0661\u0662",
        "chatcmpl-xyz",
        "job_doesnotexist",
        "router:apis",
        "job_1 2",
    ],
)
def test_malformed_job_ids_are_404_and_not_echoed(bare: Any, raw: str) -> None:
    fixed = not_found(bare.get("/v1/jobs/x"))["message"]  # the same words for every one
    for resp in (
        bare.get(f"/v1/jobs/{raw}"),
        bare.get(f"/v1/jobs/{raw}/events"),
        bare.delete(f"/v1/jobs/{raw}"),
    ):
        err = not_found(resp)
        assert (err["message"], err["param"]) == (fixed, "job_id")


def test_a_completion_id_names_its_job(bare: Any, finished_job: str) -> None:
    hexpart = finished_job.removeprefix("job_")
    assert bare.get(f"/v1/jobs/chatcmpl-{hexpart}").get_json()["id"] == finished_job


@pytest.mark.parametrize(
    "after",
    [
        "\u0661",  # ARABIC-INDIC DIGIT ONE: str.isdigit() says yes, Redis says no
        "\u0661-0",
        "0-\u0661",
        "\uff11-0",  # FULLWIDTH DIGIT ONE
        "1",
        "1-2-3",
        "-1",
        "18446744073709551616-0",  # 2**64
        "1" * 21 + "-0",
        "garbage",
    ],
)
def test_event_ids_must_be_ascii_ms_dash_seq(bare: Any, finished_job: str, after: str) -> None:
    path = f"/v1/jobs/{finished_job}/events"
    header = {"Last-Event-ID": after.encode().decode("latin-1")}  # UTF-8 bytes on the wire
    for resp, param in (
        (bare.get(path, headers=header), "Last-Event-ID"),
        (bare.get(path, query_string={"last_event_id": after}), "last_event_id"),
    ):
        assert resp.status_code == 400, resp.get_data(as_text=True)
        err = resp.get_json()["error"]
        assert (err["type"], err["param"]) == ("invalid_request_error", param)


def test_a_valid_event_id_still_resumes(bare: Any, finished_job: str) -> None:
    resp = bare.get(f"/v1/jobs/{finished_job}/events", headers={"Last-Event-ID": "0-0"})
    assert resp.status_code == 200
    frames = [f for f in resp.get_data(as_text=True).split("\n\n") if "event:" in f]
    assert len(frames) == 1 and "event: cancelled" in frames[0]


@pytest.mark.timeout(30)
def test_a_resume_after_the_terminal_event_is_204_at_once(bare: Any, stack: Any) -> None:
    """EventSource reconnects after every stream; 204 is what stops it. Before, the stream
    waited for events that would never come until the job's deadline."""
    job_id = f"job_{uuid.uuid4().hex[:24]}"
    r = stack.redis()
    now = time.time()
    r.hset(
        keys.job_key(job_id),
        mapping={"id": job_id, "status": "cancelled", "queue": "local-mps", "deadline": now + 5},
    )
    final = r.xadd(keys.events_key(job_id), {"type": "cancelled"})
    for after in (final, "18446744073709551615-0"):
        t0 = time.monotonic()
        resp = bare.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": after})
        assert resp.status_code == 204 and resp.get_data() == b""
        assert time.monotonic() - t0 < 1.0
    r.delete(keys.job_key(job_id), keys.events_key(job_id))


def test_idempotency_keys_live_as_long_as_configured(stack: Any, worker: Any) -> None:
    from api import create_app

    base = {"REDIS_URL": stack.redis_url, "DATABASE_URL": stack.db_url, "TESTING": True}
    client = create_app({**base, "IDEMPOTENCY_TTL": 7}).test_client()
    key = f"ttl-{uuid.uuid4().hex}"
    first = client.post("/v1/jobs", json=SHORT, headers={"Idempotency-Key": key})
    assert first.status_code == 202, first.get_data(as_text=True)
    assert 0 < stack.redis().ttl(keys.idempotency_key(key)) <= 7
    client.delete(f"/v1/jobs/{first.get_json()['id']}")
