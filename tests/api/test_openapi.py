"""The OpenAPI document (api/openapi.py): every route is in it, the request schema is the one
that validates requests, and the bodies the API builds conform to the response schemas.
No Redis needed: building the document and the bodies touches none."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from jsonschema import Draft202012Validator

from api import create_app, openapi
from api.blueprints.jobs import job_body
from api.schemas import (
    ChatCompletionRequest,
    accepted_fields,
    chunk_body,
    completion_body,
    model_body,
    parse_chat_request,
    usage_chunk_body,
)
from tasks.events import StreamEvent, Transcript
from tasks.jobs import JobRecord
from tasks.keys import Event, JobStatus
from workers.errors import InvalidRequestError, ModelNotFoundError, RateLimitError
from workers.protocol import Usage

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def app() -> Flask:
    return create_app({"TESTING": True})


@pytest.fixture(scope="module")
def doc(app: Flask) -> dict[str, Any]:
    resp = app.test_client().get("/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    found: dict[str, Any] = resp.get_json()
    return found


def conforms(doc: dict[str, Any], name: str, body: Any) -> list[str]:
    """The faults of `body` against the component schema `name` (none: it conforms)."""
    schema = {"$ref": openapi.REF.format(model=name), "components": doc["components"]}
    return [e.message for e in Draft202012Validator(schema).iter_errors(body)]


def test_every_route_has_a_row_and_every_row_a_route(app: Flask) -> None:
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert endpoints - set(openapi.OPERATIONS) == set(), "document these in api/openapi.py"
    assert set(openapi.OPERATIONS) - endpoints == set(), "rows for routes that do not exist"


def test_every_route_and_method_is_in_the_document(app: Flask, doc: dict[str, Any]) -> None:
    for rule in app.url_map.iter_rules():
        path = doc["paths"][openapi.openapi_path(rule)]
        for method in (rule.methods or set()) - openapi.IMPLICIT_METHODS:
            op = path[method.lower()]
            assert op["summary"] and op["responses"], rule
            assert set(op["parameters"][i]["name"] for i in range(len(rule.arguments))) == set(
                rule.arguments
            )
    assert doc["openapi"].startswith("3.1")
    ws = doc["paths"]["/v1/ws"]["get"]
    assert ws["x-websocket"] is True and "101" in ws["responses"]


def test_every_error_response_is_openai_shaped(doc: dict[str, Any]) -> None:
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            for status, response in op["responses"].items():
                if int(status) < 400 or (path, status) == ("/readyz", "503"):
                    continue  # a failed readiness probe answers with what failed
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
    error = InvalidRequestError("bad", param="messages").info().body()
    assert conforms(doc, "Error", error) == []
    assert conforms(doc, "Error", {"error": {"message": "m", "type": "t"}}) != []


def test_the_request_schema_is_the_validating_model(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    request = schemas["ChatCompletionRequest"]
    expected = ChatCompletionRequest.model_json_schema(ref_template=openapi.REF)
    assert request["properties"] == expected["properties"]
    assert set(expected.get("$defs", {})) <= set(schemas)
    assert set(request["properties"]) <= accepted_fields() == set(request["propertyNames"]["enum"])
    body = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("ChatCompletionRequest")


@pytest.mark.parametrize(
    "body",
    [
        BODY,
        {**BODY, "stream": True, "stream_options": {"include_usage": True}, "stop": ["x"]},
        {**BODY, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    ],
)
def test_a_body_the_parser_accepts_conforms(doc: dict[str, Any], body: dict[str, Any]) -> None:
    parse_chat_request(body)
    assert conforms(doc, "ChatCompletionRequest", body) == []


def test_the_documented_examples_are_valid_requests(doc: dict[str, Any]) -> None:
    for path in ("/v1/chat/completions", "/v1/jobs"):
        media = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert media["examples"]
        for example in media["examples"].values():
            parse_chat_request(example["value"])
            assert conforms(doc, "ChatCompletionRequest", example["value"]) == []


def test_a_stream_ends_with_done_or_an_error(doc: dict[str, Any]) -> None:
    """Each `data:` of a streamed completion is a chunk, `[DONE]`, or a mid-stream error."""
    ok = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]
    data = ok["content"]["text/event-stream"]["schema"]["properties"]["data"]
    targets = [branch.get("contentSchema", branch) for branch in data["anyOf"]]
    assert targets == [
        {"const": "[DONE]"},
        {"$ref": "#/components/schemas/ChatCompletionChunk"},
        {"$ref": "#/components/schemas/Error"},
    ]


@pytest.mark.parametrize(
    "body",
    [
        {**BODY, "not_a_field": 1},
        {**BODY, "messages": []},
        {**BODY, "messages": [{"role": "robot", "content": "hi"}]},
        {**BODY, "max_tokens": 0},
        {"messages": BODY["messages"]},
    ],
)
def test_a_body_the_document_refuses_the_parser_refuses(
    doc: dict[str, Any], body: dict[str, Any]
) -> None:
    assert conforms(doc, "ChatCompletionRequest", body) != []
    with pytest.raises(InvalidRequestError):
        parse_chat_request(body)


def test_completion_bodies_conform(doc: dict[str, Any]) -> None:
    usage = Usage(3, 2)
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    logprobs = [{"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}]
    for body in (
        completion_body("chatcmpl-1", 1, "m", "hi", "stop", usage),
        completion_body("chatcmpl-1", 1, "m", "", "tool_calls", None, [call], logprobs),
    ):
        assert conforms(doc, "ChatCompletion", body) == []
    for chunk in (
        chunk_body("chatcmpl-1", 1, "m", {"role": "assistant", "content": ""}),
        chunk_body("chatcmpl-1", 1, "m", {"content": "x"}, "stop", True, logprobs),
        usage_chunk_body("chatcmpl-1", 1, "m", usage),
    ):
        assert conforms(doc, "ChatCompletionChunk", chunk) == []
    assert conforms(doc, "ChatCompletion", {"object": "chat.completion"}) != []


def test_model_bodies_conform(doc: dict[str, Any]) -> None:
    model = model_body(
        "m", 1, "local", available=True, context_window=8192, max_tokens=512, aliases=["x"]
    )
    assert conforms(doc, "Model", model) == []
    assert conforms(doc, "ModelList", {"object": "list", "data": [model]}) == []


def _record(status: JobStatus) -> JobRecord:
    return JobRecord(
        id="job_ab", status=status, model="m", backend="local", queue="local-mps", attempt=1,
        created=1.5, started=2.0, finished=None, cancel_requested=False, worker="w",
        deadline=9.0,
    )  # fmt: skip


def test_job_bodies_conform(doc: dict[str, Any]) -> None:
    running = Transcript(parts=["he"])
    done = Transcript(parts=["hello"])
    done.final = StreamEvent("1-2", Event.DONE, finish_reason="stop", usage=Usage(1, 1))
    failed = Transcript()
    failed.final = StreamEvent("1-1", Event.ERROR, error=RateLimitError("slow down").info())
    for status, transcript in (
        (JobStatus.QUEUED, Transcript()),
        (JobStatus.RUNNING, running),
        (JobStatus.SUCCEEDED, done),
        (JobStatus.FAILED, failed),
    ):
        body = job_body(_record(status), transcript)
        assert conforms(doc, "Job", body) == [], body


def test_errors_the_api_renders_conform(app: Flask, doc: dict[str, Any]) -> None:
    client = app.test_client()
    for resp in (
        client.get("/no/such/route"),
        client.put("/openapi.json"),
        client.post("/v1/chat/completions", data="{}", content_type="text/plain"),
        client.get("/v1/ws"),  # a plain GET on a WebSocket route
    ):
        assert resp.status_code >= 400
        assert conforms(doc, "Error", resp.get_json()) == [], resp.get_json()
    not_found = ModelNotFoundError("no such model", param="model").info().body()
    assert conforms(doc, "Error", not_found) == []


def test_the_docs_page_lists_every_operation_and_runs_no_script(
    app: Flask, doc: dict[str, Any]
) -> None:
    resp = app.test_client().get("/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = resp.get_data(as_text=True)
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert not re.search(r"<(script|link|img|iframe)\b|\ssrc=", page)  # loads nothing
    for path, methods in doc["paths"].items():
        assert f"<code>{path}</code>" in page
        for op in methods.values():
            assert f'id="{op["operationId"]}"' in page
    assert 'href="openapi.json"' in page
    for target in set(re.findall(r'href="#([^"]+)"', page)):
        assert f'id="{target}"' in page, target  # every schema link lands on its schema
