"""Schemathesis against the live stack, every operation of `GET /openapi.json`: the real API
under gunicorn, real Redis, a real Celery worker on the `openai` queue in front of the fake
OpenAI server (tests/fakes/openai_api.py), so no model runs and a completion takes
milliseconds.

Each operation gets the document's examples and a few dozen generated requests, valid and
invalid ones (the same ones every run: derandomized). Pass: no 5xx, every status, content
type, header and body (each SSE event's too) as the document says, and every error in
OpenAI's shape. Completions are aimed at the fake's model most of the time (and at a random
name the rest, for the 404 path), with small max_tokens; the job operations also run on
real jobs, by hand. The whole module takes well under a minute.

For a deeper search, raise MAX_EXAMPLES and drop `derandomize`.
"""

from __future__ import annotations

import copy
import os
import zlib
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api import create_app
from api.openapi import CHAT_EXAMPLES, build
from tests.conftest import Stack, Worker, wait_until
from tests.fakes.openai_api import start_openai_fake

FAKE_MODEL = "gpt-4o-mini"  # served by the fake; tests/fakes/openai_api.py DEFAULT_MODELS
MAX_TOKENS = 16
MAX_EXAMPLES = 25  # per operation, valid and invalid requests together
COMPLETION_PATHS = ("/v1/chat/completions", "/v1/jobs")
#: A failed readiness probe answers with what failed, not with an error object.
NOT_ERRORS = {("/readyz", 503)}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def fuzz_api(
    stack: Stack, start_worker: Callable[..., Worker], start_api: Callable[..., str]
) -> Iterator[str]:
    """The API with the `openai` backend on, and one worker serving it from the fake."""
    fake = start_openai_fake()
    worker = start_worker(
        "openai", concurrency=8, OPENAI_API_KEY="sk-fake-fuzz", OPENAI_BASE_URL=fake.url + "/v1"
    )
    url = start_api(
        "api-fuzz",
        DATABASE_URL=f"sqlite:///{stack.tmp / 'fuzz.db'}",
        OPENAI_API_KEY="set-on-the-workers-only",
    )
    wait_until(lambda: _available(url, FAKE_MODEL), 30, f"{FAKE_MODEL} available", worker.log)
    yield url
    worker.stop()  # later modules may serve the `openai` queue differently
    fake.stop()


def _available(url: str, model: str) -> bool:
    body = httpx.get(f"{url}/v1/models/{model}", timeout=5).json()
    return bool(body.get("available"))


def build_document() -> dict[str, Any]:
    """The document of an app built here, so that it is known at collection and each
    operation is a test of its own; test_the_served_document_is_the_one_fuzzed ties it to
    the live one. Building it opens no connection; the environment is left as it was."""
    with mock.patch.dict(os.environ):
        return build(create_app({"TESTING": True}))


DOCUMENT = build_document()


def load_schema(document: dict[str, Any]) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "request-timeout": 30,
            "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
            "phases": {"coverage": {"enabled": False}},
        }
    )
    return schemathesis.openapi.from_dict(copy.deepcopy(document), config=config)


schema = load_schema(DOCUMENT)


def aim(case: Any) -> None:
    """Point a generated completion at the fake's model (three times in four, by a hash of
    the generated name, so shrinking is stable) and keep its max_tokens small."""
    body = case.body
    if case.path not in COMPLETION_PATHS or not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str) and zlib.crc32(body["model"].encode()) % 4:
        body["model"] = FAKE_MODEL
    for name in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(name), int) and not isinstance(body[name], bool):
            body[name] = max(1, min(body[name], MAX_TOKENS))


def openai_error_shape(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    """Every 4xx and 5xx body is `{"error": {message, type, param, code}}`."""
    if response.status_code < 400 or (case.path, response.status_code) in NOT_ERRORS:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"not an OpenAI error: {body}"
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error), f"missing fields: {error}"
    assert isinstance(error["message"], str) and isinstance(error["type"], str), error
    assert all(error[k] is None or isinstance(error[k], str) for k in ("param", "code")), error
    return True


#: Reproducible runs (the same examples every time), nothing written to the repository.
SETTINGS = settings(
    deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


@schema.parametrize()
@SETTINGS
def test_every_operation_keeps_its_contract(case: Any, fuzz_api: str) -> None:
    aim(case)
    case.call_and_validate(base_url=fuzz_api, checks=CHECKS, additional_checks=[openai_error_shape])


def call(url: str, method: str, path: str, **given: Any) -> Any:
    """One request made by hand, held to the same checks as the generated ones."""
    case = schema[path][method].Case(**given)
    return case.call_and_validate(
        base_url=url, checks=CHECKS, additional_checks=[openai_error_shape]
    )


def test_a_job_keeps_the_contract_through_its_life(fuzz_api: str) -> None:
    """The job operations on real jobs (the fuzzer's job ids are random, so they see 404s),
    following the document's links: a job's id from `POST /v1/jobs`, a completion's from
    its `x-router-job-id` (and its `chatcmpl-` id); then read it, stream it, resume after
    its last event, and cancel it once it has finished."""
    hello = {**CHAT_EXAMPLES["answer"]["value"], "model": FAKE_MODEL}
    stream = {**CHAT_EXAMPLES["stream"]["value"], "model": FAKE_MODEL}
    queued = call(fuzz_api, "POST", "/v1/jobs", body=hello).json()["id"]
    done = call(fuzz_api, "POST", "/v1/chat/completions", body=hello)
    call(fuzz_api, "POST", "/v1/chat/completions", body=stream)

    def job(method: str, path: str, job_id: str, **given: Any) -> Any:
        return call(fuzz_api, method, path, path_parameters={"job_id": job_id}, **given)

    for jid in (queued, done.headers["x-router-job-id"][0], done.json()["id"]):
        wait_until(
            lambda j=jid: job("GET", "/v1/jobs/{job_id}", j).json()["status"] == "succeeded",
            30,
            f"job {jid} to succeed",
        )
        events = job("GET", "/v1/jobs/{job_id}/events", jid).text
        last = [line[4:] for line in events.splitlines() if line.startswith("id: ")][-1]
        after = job("GET", "/v1/jobs/{job_id}/events", jid, headers={"Last-Event-ID": last})
        assert after.status_code == 204  # nothing follows the terminal event
        assert job("DELETE", "/v1/jobs/{job_id}", jid).status_code == 409  # it has finished
    assert call(fuzz_api, "GET", "/v1/models").json()["data"]
    model = call(fuzz_api, "GET", "/v1/models/{model_id}", path_parameters={"model_id": FAKE_MODEL})
    assert model.json()["available"]


def test_the_served_document_is_the_one_fuzzed(fuzz_api: str) -> None:
    assert httpx.get(f"{fuzz_api}/openapi.json", timeout=10).json() == DOCUMENT
