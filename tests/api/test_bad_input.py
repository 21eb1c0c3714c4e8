"""Bad input gets an OpenAI-shaped error with the right status, and nothing breaks."""

from __future__ import annotations

import time

import pytest

from api.schemas import parse_chat_request
from registry.crud import add_backend, add_model
from tests.conftest import stack_app

JSON = "application/json"
GOOD = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture
def app(stack):  # type: ignore[no-untyped-def]
    """The app without the session's model worker: a bad request never reaches one, so
    these tests do not wait for the model to load (those that need it ask for `worker`)."""
    return stack_app(stack)


def error_of(resp, status: int) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def test_malformed_json_is_400(client) -> None:
    err = error_of(client.post("/v1/chat/completions", data=b"{not json", content_type=JSON), 400)
    assert err["type"] == "invalid_request_error"
    assert "JSON" in err["message"]


def test_empty_body_and_non_object_are_400(client) -> None:
    error_of(client.post("/v1/chat/completions", data=b"", content_type=JSON), 400)
    error_of(client.post("/v1/chat/completions", data=b"[1, 2]", content_type=JSON), 400)


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.[0].role"),
        ({"messages": [{"role": "user"}]}, "messages.[0].content"),
        ({"messages": [{"role": "user", "content": 7}]}, "messages.[0].content"),
        ({"model": ""}, "model"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"n": 3}, "n"),
    ],
)
def test_invalid_fields_are_400_with_param(client, patch: dict, param: str) -> None:
    body = {k: v for k, v in {**GOOD, **patch}.items() if v is not None}
    err = error_of(client.post("/v1/chat/completions", json=body), 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param


@pytest.fixture(scope="module")
def unserved(registry_db) -> str:
    """A model on an OpenAI-compatible backend no worker serves: a request that got past
    validation would wait for a worker and get 503, so a 400 proves it was refused first."""
    add_backend(registry_db, "boundary-nowhere", "openai-compatible", queue="boundary-nowhere")
    add_model(registry_db, "boundary-model", "boundary-nowhere", upstream="x")
    return "boundary-model"


CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def user(*parts: object) -> dict:
    return {"messages": [{"role": "user", "content": list(parts)}]}


def after_user(message: dict) -> dict:
    return {"messages": [{"role": "user", "content": "Hi"}, message]}


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        (user({"type": "text", "text": 5}), "messages.[0].content.[0].text"),
        (user({"type": "text"}), "messages.[0].content.[0].text"),
        (user({"text": "no type"}), "messages.[0].content.[0].type"),
        (user({"type": "video", "video": {}}), "messages.[0].content.[0].type"),
        (user({"type": "image_url", "image_url": {}}), "messages.[0].content.[0].image_url.url"),
        (user({"type": "image_url", "image_url": "u"}), "messages.[0].content.[0].image_url"),
        (
            user({"type": "image_url", "image_url": {"url": "u", "detail": "ultra"}}),
            "messages.[0].content.[0].image_url.detail",
        ),
        (
            user({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "ogg"}}),
            "messages.[0].content.[0].input_audio.format",
        ),
        (
            {"messages": [{"role": "system", "content": [{"type": "refusal", "refusal": "x"}]}]},
            "messages.[0].content.[0].type",
        ),
        (
            {"messages": [{"role": "system", "content": [{"type": "text", "text": 5}]}]},
            "messages.[0].content.[0].text",
        ),
        (after_user({"role": "assistant", "tool_calls": ["x"]}), "messages.[1].tool_calls.[0]"),
        (
            after_user({"role": "assistant", "tool_calls": [{**CALL, "id": None}]}),
            "messages.[1].tool_calls.[0].id",
        ),
        (
            after_user({"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f"}}]}),
            "messages.[1].tool_calls.[0].function.arguments",
        ),
        (after_user({"role": "tool", "content": "{}"}), "messages.[1].tool_call_id"),
        ({"tools": ["x"]}, "tools.[0]"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools.[0].function.name"),
        ({"tools": [{"type": "retrieval"}]}, "tools.[0].type"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name"),
        (
            {"response_format": {"type": "json_schema", "json_schema": "x"}},
            "response_format.json_schema",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "response_format.json_schema.name",
        ),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"stop": ["ok", 1]}, "stop.[1]"),
        ({"stop": 5}, "stop"),
        ({"temperature": 1e-300}, "temperature"),
        ({"seed": 2**63}, "seed"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"50256": 500}}, "logit_bias.50256"),
        ({"parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ],
)
def test_shapes_workers_rely_on_are_400_before_any_worker(
    client, unserved: str, patch: dict, param: str
) -> None:
    body = {**GOOD, "model": unserved, **patch}
    err = error_of(client.post("/v1/jobs", json=body), 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert f"'{param}'" in err["message"]


@pytest.mark.parametrize("temperature", [0, 0.001, 1, 2])
def test_temperature_zero_or_from_a_thousandth_to_two_is_accepted(temperature: float) -> None:
    assert parse_chat_request({**GOOD, "temperature": temperature}).temperature == temperature


def test_unknown_model_is_404_model_not_found(client) -> None:
    err = error_of(client.post("/v1/chat/completions", json={**GOOD, "model": "gpt-9"}), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "gpt-9" in err["message"]
    error_of(client.get("/v1/models/gpt-9"), 404)


def test_model_of_disabled_backend_is_404_naming_the_key(client) -> None:
    err = error_of(client.post("/v1/chat/completions", json={**GOOD, "model": "gpt-4o-mini"}), 404)
    assert err["code"] == "model_not_found"
    assert "OPENAI_API_KEY" in err["message"]


def test_body_over_the_limit_is_413(app, client) -> None:
    app.config["MAX_CONTENT_LENGTH"] = 1024
    big = {**GOOD, "messages": [{"role": "user", "content": "x" * 4096}]}
    err = error_of(client.post("/v1/chat/completions", json=big), 413)
    assert err["code"] == "request_too_large"


def test_unknown_job_is_404(client) -> None:
    for method in (client.get, client.delete):
        err = error_of(method("/v1/jobs/job_0000"), 404)
        assert err["code"] == "job_not_found"


def test_unknown_route_and_wrong_method(client) -> None:
    error_of(client.get("/v1/nothing-here"), 404)
    error_of(client.put("/v1/chat/completions", json=GOOD), 405)


def test_model_with_no_live_worker_is_503_after_a_bounded_wait(client, registry_db) -> None:
    add_backend(registry_db, "nobody-home", "local", queue="nobody-home")
    add_model(registry_db, "orphan-model", "nobody-home", upstream="x")
    for path in ("/v1/chat/completions", "/v1/jobs"):
        started = time.monotonic()
        resp = client.post(path, json={**GOOD, "model": "orphan-model"})
        waited = time.monotonic() - started
        err = error_of(resp, 503)
        assert err["code"] == "no_worker_available"
        assert "nobody-home" in err["message"]
        assert resp.headers["Retry-After"] == "1"
        assert 1.0 <= waited < 5.0  # WORKER_WAIT is 1 s in these tests


def test_request_id_is_echoed_or_made(client) -> None:
    assert (
        client.get("/healthz", headers={"x-request-id": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    made = client.get("/healthz", headers={"x-request-id": "bad id <script>"}).headers[
        "x-request-id"
    ]
    assert made.startswith("req_")


def test_admin_answers_loopback_only_without_a_key(client) -> None:
    assert client.get("/admin/workers").status_code == 200
    err = error_of(client.get("/admin/workers", environ_overrides={"REMOTE_ADDR": "10.1.2.3"}), 403)
    assert err["type"] == "permission_error"


def test_admin_requires_the_bearer_key_when_set(app, client) -> None:
    app.config["ADMIN_KEY"] = "s3cret"
    err = error_of(client.get("/admin/backends"), 401)
    assert err["type"] == "authentication_error"
    error_of(client.get("/admin/backends", headers={"Authorization": "Bearer nope"}), 401)
    ok = client.get("/admin/backends", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    names = {b["name"] for b in ok.get_json()["data"]}
    assert {"local", "openai", "anthropic", "llm-d"} <= names
    remote = client.get(
        "/admin/backends",
        headers={"Authorization": "Bearer s3cret"},
        environ_overrides={"REMOTE_ADDR": "10.1.2.3"},
    )
    assert remote.status_code == 200


def test_service_keeps_serving_after_bad_requests(client, worker) -> None:
    for _ in range(3):
        client.post("/v1/chat/completions", data=b"\xff\xfe garbage", content_type=JSON)
    ok = client.post("/v1/chat/completions", json=GOOD)
    assert ok.status_code == 200
    assert ok.get_json()["object"] == "chat.completion"


def test_health_and_readiness(client, worker) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz").get_json()
    assert ready["status"] == "ok" and ready["redis"] == "ok" and ready["database"] == "ok"
    assert ready["workers"]["local-mps"] >= 1


def test_unreachable_redis_is_a_fast_503_and_the_app_recovers(stack, worker, tmp_path) -> None:
    import subprocess

    from api import create_app
    from tasks.redis_server import server_args
    from tests.conftest import free_port, wait_until

    port = free_port()
    down = create_app(
        {
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "DATABASE_URL": stack.db_url,
            "TESTING": True,
        }
    ).test_client()
    started = time.monotonic()
    err = error_of(down.post("/v1/chat/completions", json=GOOD), 503)
    assert time.monotonic() - started < 2.0
    assert err["code"] == "service_unavailable"
    ready = down.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["redis"].startswith("error")
    redis_proc = subprocess.Popen(server_args(port, tmp_path, aof=False), stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: down.get("/readyz").status_code == 200, 10, "recovery")
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)


def test_local_model_no_worker_has_loaded_is_503(client, worker, registry_db) -> None:
    add_model(registry_db, "ghost-model", "local", upstream="not-loaded")
    resp = client.post("/v1/chat/completions", json={**GOOD, "model": "ghost-model"})
    err = error_of(resp, 503)
    assert "not-loaded" in err["message"] and "local-mps" in err["message"]
