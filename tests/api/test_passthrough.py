"""Request fields the router does not read reach a backend only when its pass-through list in
workers/providers.json names them; a field no list names and OpenAI's request schema does
not have is refused, as OpenAI refuses it. The worker applies the same lists, so a job
written straight into Redis cannot smuggle fields either."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from api.routing import Candidate
from api.schemas import parse_chat_request
from api.serving import ChatService
from registry.crud import add_backend, add_model
from registry.queries import DeploymentInfo
from tasks import keys
from workers import openai_compat
from workers.protocol import ChatJob

QUEUE = "passthrough-test"  # no worker consumes it: the jobs only sit in Redis
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
ASK = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}]}
#: one field of each sort: OpenAI's and taken by most, OpenAI's and taken by few, a
#: provider's own that one backend takes
FIELDS: dict[str, Any] = {
    "tools": [TOOL],
    "user": "u-1",
    "service_tier": "priority",
    "store": True,
    "metadata": {"team": "a"},
    "reasoning_effort": "low",
    "top_k": 5,
    "reasoning": {"effort": "low"},
}


@pytest.fixture(scope="module")
def unserved(registry_db) -> str:
    add_backend(registry_db, "passthrough-nowhere", "openai-compatible", queue=QUEUE)
    add_model(registry_db, "passthrough-model", "passthrough-nowhere", upstream="x")
    return "passthrough-model"


@pytest.fixture
def service(app) -> Iterator[ChatService]:
    with app.app_context():
        chat: ChatService = app.extensions["chat"]
        yield chat
        chat.services.redis.delete(QUEUE, keys.queued_key(QUEUE))


def extra_sent(service: ChatService, backend: str, kind: str, fields: dict[str, Any]) -> dict:
    """The `extra` of the job a request with `fields` becomes on a deployment of `backend`."""
    route = service.services.registry.get().resolve(ASK["model"])
    assert route is not None
    sub = service.submit(
        parse_chat_request({**ASK, **fields}),
        cand=Candidate(route, DeploymentInfo(backend, kind, QUEUE, "x", None, None, enabled=True)),
    )
    raw = service.services.redis.hget(keys.job_key(sub.job_id), "request")
    service.services.jobs.cancel(sub.job_id)  # which drops the stored request
    extra: dict = ChatJob.from_dict(orjson.loads(raw)).extra
    return extra


@pytest.mark.parametrize("name", ["ignore_eos", "models", "provider", "priority", "foo"])
def test_a_field_no_one_takes_is_refused_with_openais_wording(client, unserved, name) -> None:
    resp = client.post("/v1/jobs", json={**ASK, "model": unserved, name: True})
    assert resp.status_code == 400, resp.get_data(as_text=True)
    err = resp.get_json()["error"]
    assert err["message"] == f"Unrecognized request argument supplied: {name}"
    assert err["param"] == name and err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("backend", "kind", "kept"),
    [
        ("openai", "openai-compatible", {"tools", "user", "reasoning_effort"}),
        ("openrouter", "openai-compatible", {"tools", "user", "top_k", "reasoning"}),
        ("venice", "openai-compatible", {"tools", "user"}),
        ("my-vllm", "openai-compatible", {"tools", "user"}),  # operator-added: its kind's
        ("llm-d", "llm-d", {"tools", "user", "top_k"}),
        ("anthropic", "anthropic", {"tools", "user"}),
        ("google", "google", {"tools"}),
        ("local", "local", {"tools"}),  # kept so the local worker can refuse it (400)
    ],
)
def test_each_backend_gets_only_the_fields_on_its_list(
    service, backend: str, kind: str, kept: set[str]
) -> None:
    assert set(extra_sent(service, backend, kind, FIELDS)) == kept


def test_a_field_a_backend_does_not_take_is_dropped_not_refused(service) -> None:
    assert extra_sent(service, "local", "local", {"logit_bias": {"1": 5}, "user": "u"}) == {}


def test_the_worker_drops_what_its_backend_may_not_get() -> None:
    """A job written straight into Redis with fields the API would have dropped."""
    job = ChatJob(
        id="job_x",
        model="gpt-4o-mini",
        backend="openai",
        kind="openai-compatible",
        upstream_model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        extra={**FIELDS, "provider": {"order": ["x"]}, "ignore_eos": True},
    )
    body = openai_compat.build_request(job)
    assert {"tools", "user", "reasoning_effort"} <= set(body)
    for smuggled in ("service_tier", "store", "metadata", "top_k", "provider", "ignore_eos"):
        assert smuggled not in body
