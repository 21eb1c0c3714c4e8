"""The registry's max_tokens is each model's completion cap and default: more than the cap of
the model asked for is a 400 (as OpenAI answers), a fallback with a lower cap cuts the
request to its own, and a request that sets none gets the cap, unless the cap is the whole
context window."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from api.routing import Candidate
from api.schemas import parse_chat_request
from api.serving import ChatService
from registry.crud import add_backend, add_model
from registry.queries import DeploymentInfo
from tasks import keys
from workers.protocol import ChatJob

QUEUE = "max-tokens-test"  # no worker consumes it: the jobs only sit in Redis


@pytest.fixture(scope="module")
def models(registry_db) -> None:
    add_backend(registry_db, "max-tokens-nowhere", "openai-compatible", queue=QUEUE)
    add_model(registry_db, "mt-capped", "max-tokens-nowhere", upstream="x", max_tokens=64)
    add_model(registry_db, "mt-small", "max-tokens-nowhere", upstream="x", max_tokens=16)
    add_model(
        registry_db,
        "mt-primary",
        "max-tokens-nowhere",
        upstream="x",
        max_tokens=1000,
        fallbacks=["mt-small"],
    )
    add_model(
        registry_db,
        "mt-whole",
        "max-tokens-nowhere",
        upstream="x",
        context_window=4096,
        max_tokens=4096,
    )


@pytest.fixture
def service(app, models) -> Iterator[ChatService]:
    with app.app_context():
        chat: ChatService = app.extensions["chat"]
        yield chat
        chat.services.redis.delete(QUEUE, keys.queued_key(QUEUE))


def error_of(resp, status: int) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)[:500]
    return resp.get_json()["error"]


def ask(model: str, **fields: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], **fields}


def submitted(service: ChatService, body: dict, answering: str | None = None) -> ChatJob:
    """Submit `body` to the model `answering` (default: the one it asks for), as a fallback
    would be, and return the job as stored in Redis."""
    route = service.services.registry.get().resolve(answering or body["model"])
    assert route is not None
    nowhere = DeploymentInfo(
        "max-tokens-nowhere", "openai-compatible", QUEUE, "x", None, None, enabled=True
    )
    sub = service.submit(parse_chat_request(body), cand=Candidate(route, nowhere))
    raw = service.services.redis.hget(keys.job_key(sub.job_id), "request")
    service.services.jobs.cancel(sub.job_id)  # which drops the stored request
    return ChatJob.from_dict(orjson.loads(raw))


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_more_than_the_models_cap_is_a_400_before_any_worker(client, models, field) -> None:
    err = error_of(client.post("/v1/jobs", json=ask("mt-capped", **{field: 65})), 400)
    assert err["param"] == field and err["type"] == "invalid_request_error"
    assert "64" in err["message"] and "65" in err["message"]


def test_the_cap_itself_is_accepted(service) -> None:
    assert submitted(service, ask("mt-capped", max_tokens=64)).sampling.max_tokens == 64


def test_no_max_tokens_gets_the_models_cap_as_default(service) -> None:
    assert submitted(service, ask("mt-capped")).sampling.max_tokens == 64


def test_a_fallback_cuts_the_request_to_its_own_cap(service) -> None:
    job = submitted(service, ask("mt-primary", max_tokens=500), answering="mt-small")
    assert (job.model, job.sampling.max_tokens) == ("mt-small", 16)
    job = submitted(service, ask("mt-primary"), answering="mt-small")
    assert job.sampling.max_tokens == 16


def test_a_cap_as_large_as_the_context_window_is_no_default(service) -> None:
    # a discovered llm-d model's cap is its window: sent, it would leave no room for the prompt
    assert submitted(service, ask("mt-whole")).sampling.max_tokens is None
    assert submitted(service, ask("mt-whole", max_tokens=100)).sampling.max_tokens == 100


def test_the_local_model_refuses_more_than_its_cap_through_the_sdk(openai_client) -> None:
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as err:
        openai_client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": "Hi"}], max_tokens=513
        )
    assert err.value.response.json()["error"]["param"] == "max_tokens"
