"""The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`.

Built from the app itself so that it cannot drift from what the API serves:

- paths and methods from the Flask url_map: every route is in the document;
- request bodies from the pydantic models that validate them (api/schemas.py), with the
  top-level field names the parser accepts (`accepted_fields`);
- what the url_map cannot say (summary, parameters, responses) from OPERATIONS, one row per
  Flask endpoint; tests/api/test_openapi.py fails when a route has no row, and checks the
  bodies the API builds against the response shapes (api/responses.py);
- every error response is `Error`, OpenAI's `{"error": {message, type, param, code}}`.

tests/e2e/test_openapi_fuzz.py fuzzes every operation of the live stack against it.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from werkzeug.routing import Rule

from api.responses import (
    RESPONSE_SHAPES,
    AdminList,
    ChatCompletion,
    ChatCompletionChunk,
    Error,
    Health,
    Job,
    Model,
    ModelList,
    Readiness,
)
from api.schemas import ChatCompletionRequest, accepted_fields

REF = "#/components/schemas/{model}"
JSON = "application/json"
SSE = "text/event-stream"
#: Methods Flask adds to every route on its own; not operations of their own.
IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})


def ref(model: type[BaseModel] | str) -> dict[str, str]:
    """A reference to the component schema of `model`."""
    name = model if isinstance(model, str) else model.__name__
    return {"$ref": REF.format(model=name)}


def sse_event(data: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event (`event:`, `id:`, `data:` lines), its `data` described by `data`."""
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"event": {"type": "string"}, "id": {"type": "string"}, "data": data},
    }


#: A job event: `data` is one JSON object (`token`, `restart`, `done`, `error`, `cancelled`).
SSE_EVENT = sse_event({"type": "string", "contentMediaType": JSON})


def json_text(model: type[BaseModel]) -> dict[str, Any]:
    """A string holding one JSON document of `model`'s shape."""
    return {"type": "string", "contentMediaType": JSON, "contentSchema": ref(model)}


#: A streamed completion: `data` is a chunk, then `[DONE]`; or, when the completion fails
#: midway, an `Error` (OpenAI's mid-stream error), which ends the stream.
CHUNK_EVENT = sse_event(
    {"anyOf": [{"const": "[DONE]"}, json_text(ChatCompletionChunk), json_text(Error)]}
)

# -- statuses -------------------------------------------------------------------------------
WHY = {
    400: "Invalid request (or a Host this server does not answer to).",
    401: "Missing or wrong admin key.",
    403: "Refused: a browser Origin that is not allowed, or /admin from elsewhere.",
    404: "Not found.",
    409: "Conflict with the state of the job.",
    413: "The request body is too large.",
    415: "The body is not declared as `application/json`.",
    429: "Rate limited; `Retry-After` says when to retry.",
    500: "The server had an error.",
    502: "The upstream backend failed.",
    503: "Unavailable (Redis down, or no worker); `Retry-After` says when to retry.",
    504: "The request timed out.",
}
COMMON = (400, 500)  # any route: a Host outside ALLOWED_HOSTS, an unexpected failure
REDIS = (*COMMON, 503)  # a route that reads Redis
POSTED = (*REDIS, 403, 413, 415)  # a JSON POST: Origin, body size and type are checked
COMPLETION = (*POSTED, 404, 429, 502, 504)


@dataclass(frozen=True)
class Operation:
    """What the document says of one Flask endpoint beyond its path and methods."""

    summary: str
    ok: Mapping[int, Mapping[str, Any]]  # status -> {media type: schema}
    errors: Iterable[int] = COMMON
    body: type[BaseModel] | None = None
    examples: Mapping[str, Any] = field(default_factory=dict)  # of the request body
    params: tuple[dict[str, Any], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)  # of the success response
    links: Mapping[str, Any] = field(default_factory=dict)  # of the success response
    websocket: bool = False


def _param(where: str, name: str, about: str, **schema: Any) -> dict[str, Any]:
    return {"in": where, "name": name, "description": about, "schema": {"type": "string", **schema}}


LAST_EVENT = "Resume after this event id (`<milliseconds>-<sequence>`)."
ANY_FILE: dict[str, Any] = {"*/*": {}}
HTML: dict[str, Any] = {"text/html": {"type": "string"}}


def _links(source: str, **views: str) -> dict[str, Any]:
    """OpenAPI links (name -> view of the jobs blueprint) from a response to the job it
    made, the job id read by the runtime expression `source`; clients and stateful fuzzers
    follow them."""
    return {
        name: {"operationId": f"jobs_{view}", "parameters": {"job_id": source}}
        for name, view in views.items()
    }


_HELLO = {
    "model": "smollm2-135m",  # the default local model (registry/seed.json)
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 16,
}
#: Request bodies to start from; documentation, and the first requests fuzzers send.
CHAT_EXAMPLES = {
    "answer": {"summary": "A short answer", "value": _HELLO},
    "stream": {
        "summary": "Streamed, with the usage chunk",
        "value": {**_HELLO, "stream": True, "stream_options": {"include_usage": True}},
    },
}
ROUTE_HEADERS = {
    "x-router-backend": "The backend that served the request.",
    "x-router-model": "The model that served it (after aliases, routing and fallbacks).",
    "x-router-job-id": "The job behind the completion.",
}

#: One row per Flask endpoint (`blueprint.function`).
OPERATIONS: dict[str, Operation] = {
    "openai.chat_completions": Operation(
        "Create a chat completion",
        {200: {JSON: ref(ChatCompletion), SSE: CHUNK_EVENT}},
        COMPLETION,
        body=ChatCompletionRequest,
        examples=CHAT_EXAMPLES,
        headers=ROUTE_HEADERS,
        links=_links("$response.header.x-router-job-id", GetJob="get_job"),
    ),
    "openai.list_models": Operation("List models", {200: {JSON: ref(ModelList)}}, REDIS),
    "openai.get_model": Operation("Retrieve a model", {200: {JSON: ref(Model)}}, (*REDIS, 404)),
    "jobs.create_job": Operation(
        "Queue a chat completion as a job",
        {202: {JSON: ref(Job)}},
        (*COMPLETION, 409),
        body=ChatCompletionRequest,
        examples={"answer": CHAT_EXAMPLES["answer"]},
        params=(
            _param(
                "header", "Idempotency-Key", "Replays the job created with this key.", maxLength=255
            ),
        ),
        headers={**ROUTE_HEADERS, "Location": "The job's URL."},
        links=_links(
            "$response.body#/id", GetJob="get_job", CancelJob="cancel_job", JobEvents="job_events"
        ),
    ),
    "jobs.get_job": Operation("Retrieve a job", {200: {JSON: ref(Job)}}, (*REDIS, 404)),
    "jobs.cancel_job": Operation("Cancel a job", {200: {JSON: ref(Job)}}, (*REDIS, 403, 404, 409)),
    "jobs.job_events": Operation(
        "Stream a job's events",
        {200: {SSE: SSE_EVENT}, 204: {}},
        (*REDIS, 404),
        params=(
            _param("header", "Last-Event-ID", LAST_EVENT),
            _param("query", "last_event_id", LAST_EVENT),
        ),
    ),
    "ws.job_socket": Operation(
        "Follow a job over a WebSocket",
        {101: {}},
        (*COMMON, 403),
        params=(_param("query", "last_event_id", LAST_EVENT),),
        websocket=True,
    ),
    "ws.chat_socket": Operation(
        "Send requests and receive their tokens over a WebSocket",
        {101: {}},
        (*COMMON, 403),
        websocket=True,
    ),
    "admin.models": Operation(
        "Every registry model", {200: {JSON: ref(AdminList)}}, (*COMMON, 401, 403)
    ),
    "admin.backends": Operation(
        "Every backend and its health", {200: {JSON: ref(AdminList)}}, (*REDIS, 401, 403)
    ),
    "admin.workers": Operation(
        "Every registered worker", {200: {JSON: ref(AdminList)}}, (*REDIS, 401, 403)
    ),
    "admin.keys.list_all": Operation(
        "Every API key (never a secret)", {200: {JSON: ref(AdminList)}}, (*COMMON, 401, 403)
    ),
    "admin.keys.create": Operation(
        "Create an API key; the answer holds its secret, once",
        {201: {JSON: {"type": "object"}}},
        (*POSTED, 401, 409),
    ),
    "admin.keys.get_one": Operation(
        "One API key", {200: {JSON: {"type": "object"}}}, (*COMMON, 401, 403, 404)
    ),
    "admin.keys.revoke": Operation(
        "Revoke an API key", {200: {JSON: {"type": "object"}}}, (*POSTED, 401, 404)
    ),
    "admin.keys.rotate": Operation(
        "A new secret for an API key, once", {200: {JSON: {"type": "object"}}}, (*POSTED, 401, 404)
    ),
    "admin.keys.usage": Operation(
        "What an API key used, and its budget period's spend",
        {200: {JSON: {"type": "object"}}},
        (*COMMON, 401, 403, 404),
        params=(
            _param("query", "days", "How many days back (default 30).", pattern="^[1-9][0-9]*$"),
        ),
    ),
    "health.healthz": Operation("Liveness", {200: {JSON: ref(Health)}}),
    "health.readyz": Operation(
        "Readiness: Redis and the registry database",
        {200: {JSON: ref(Readiness)}, 503: {JSON: ref(Readiness)}},
    ),
    "metrics.metrics": Operation(
        "Prometheus metrics",
        {200: {m: {"type": "string"} for m in ("text/plain", "application/openmetrics-text")}},
        REDIS,
    ),
    "openapi.document_json": Operation("This document", {200: {JSON: {"type": "object"}}}),
    "openapi.docs": Operation("This document as a web page", {200: HTML}),
    "ui.playground": Operation("The web UI: chat playground", {200: HTML}),
    "ui.ops": Operation("The web UI: live ops view", {200: HTML}),
    "ui.asset": Operation("A file of the web UI", {200: ANY_FILE}, (*COMMON, 404)),
    "static": Operation(
        "A file of the web UI (Flask's static route)", {200: ANY_FILE}, (*COMMON, 404)
    ),
}

# -- the document ---------------------------------------------------------------------------
_ARG = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def openapi_path(rule: Rule) -> str:
    """`/v1/jobs/<job_id>` -> `/v1/jobs/{job_id}`."""
    return _ARG.sub(r"{\1}", rule.rule)


def component_schemas() -> dict[str, Any]:
    """Every schema the document refers to, by name: the request model with its parts, the
    response shapes. pydantic names them; two models of one name would be renamed, and
    `ref` would miss them, so that stops the build."""
    models: list[type[BaseModel]] = [ChatCompletionRequest, *RESPONSE_SHAPES]
    refs, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    for model in models:
        if refs[(model, "validation")] != ref(model):
            raise ValueError(f"two schemas are named {model.__name__}: rename one")
    found: dict[str, Any] = top["$defs"]
    request = found[ChatCompletionRequest.__name__]
    # the parser refuses any other top-level field (api/schemas.py: parse_chat_request)
    request["propertyNames"] = {"enum": sorted(accepted_fields())}
    return found


def _header(about: str, required: bool = False) -> dict[str, Any]:
    return {"description": about, "required": required, "schema": {"type": "string"}}


OK_WHY = {101: "Switching to the WebSocket protocol.", 202: "Queued.", 204: "Nothing left."}


def _responses(op: Operation) -> dict[str, Any]:
    """The success responses of `op`, then an `Error` for each of its error statuses; every
    response carries `x-request-id` (api/__init__.py sets it on all of them)."""
    responses: dict[str, Any] = {}
    request_id = {"x-request-id": _header("The request's id.", required=True)}
    for status, content in op.ok.items():
        extra = {name: _header(about) for name, about in op.headers.items()}
        entry: dict[str, Any] = {
            "description": OK_WHY.get(status, "OK."),
            "headers": {**request_id, **extra},
        }
        if content:
            entry["content"] = {media: {"schema": schema} for media, schema in content.items()}
        if op.links:
            entry["links"] = dict(op.links)
        responses[str(status)] = entry
    retry = {"Retry-After": _header("Seconds to wait before retrying.")}
    for status in sorted(set(op.errors) - set(op.ok)):
        responses[str(status)] = {
            "description": WHY[status],
            "headers": {**request_id, **(retry if status in (429, 503) else {})},
            "content": {JSON: {"schema": ref(Error)}},
        }
    return responses


def _operation(app: Flask, rule: Rule, op: Operation) -> dict[str, Any]:
    """One operation: its row in OPERATIONS, the path parameters of `rule`, the view's
    docstring as its description."""
    view = app.view_functions[rule.endpoint]
    blueprint, _, name = rule.endpoint.rpartition(".")
    params = [
        {"in": "path", "name": arg, "required": True, "schema": {"type": "string"}}
        for arg in sorted(rule.arguments)
    ]
    doc: dict[str, Any] = {
        "operationId": f"{blueprint or 'app'}_{name}",
        "tags": [blueprint or "app"],
        "summary": op.summary,
        "description": inspect.getdoc(view) or op.summary,
        "parameters": params + list(op.params),
        "responses": _responses(op),
    }
    if op.body is not None:
        media: dict[str, Any] = {"schema": ref(op.body)}
        if op.examples:
            media["examples"] = dict(op.examples)
        doc["requestBody"] = {"required": True, "content": {JSON: media}}
    if op.websocket:
        doc["x-websocket"] = True
        doc["description"] += (
            "\n\nA WebSocket: open it with an HTTP/1.1 upgrade (`ws://`); messages are JSON. "
            "A plain GET is refused with 400."
        )
    return doc


def version() -> str:
    """The installed package's version (pyproject.toml)."""
    try:
        return metadata.version("inference-router")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "0.0.0"


def tags(app: Flask) -> list[dict[str, str]]:
    """One tag per blueprint, in OPERATIONS' order, described by its module's docstring."""
    names = dict.fromkeys(e.rpartition(".")[0] or "app" for e in OPERATIONS)
    found = []
    for name in names:
        blueprint = app.blueprints.get(name)
        module = sys.modules.get(blueprint.import_name) if blueprint else None
        about = inspect.getdoc(module) if module else "Flask's own routes."
        found.append({"name": name, "description": (about or "").split("\n\n")[0]})
    return found


def build(app: Flask, title: str = "inference-router") -> dict[str, Any]:
    """The document of every route of `app`; a route with no row in OPERATIONS is still
    listed, with a generic description, so nothing it serves is hidden."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        op = OPERATIONS.get(rule.endpoint) or Operation(rule.endpoint, {200: ANY_FILE})
        for method in sorted((rule.methods or set()) - IMPLICIT_METHODS):
            paths.setdefault(openapi_path(rule), {})[method.lower()] = _operation(app, rule, op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version(),
            "description": "OpenAI-compatible API of the router; every error is `Error`.",
        },
        "tags": tags(app),
        "paths": paths,
        "components": {"schemas": component_schemas()},
    }
