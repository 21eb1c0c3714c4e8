"""OpenAI-compatible endpoints: chat completions (JSON or SSE) and models."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request, stream_with_context

from api.accounting import begin
from api.auth import current_caller
from api.http import chat_service, json_body, json_response, request_client, route_headers
from api.schemas import model_body, parse_chat_request
from api.services import services
from api.streaming import chat_chunks
from registry.queries import ModelRoute
from workers.errors import ModelNotFoundError

bp = Blueprint("openai", __name__, url_prefix="/v1")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@bp.post("/chat/completions")
def chat_completions() -> Response:
    """Create a chat completion; with `stream: true`, as server-sent events."""
    req = parse_chat_request(json_body())
    service = chat_service()
    completion = begin(service, req.model)  # recorded once, however it ends: api/accounting.py
    client = request_client(service)
    streaming = False
    try:
        started = completion.start(
            service,
            req,
            headers=request.headers.items(),
            client=client,
            size=len(request.get_data()),
        )
        headers = route_headers(started.sub)
        if not req.stream:
            return json_response(service.complete(started), headers=headers)
        usage = bool(req.stream_options and req.stream_options.include_usage)
        keepalive = float(current_app.config["KEEPALIVE"])
        resp = Response(
            stream_with_context(chat_chunks(service, started, usage, keepalive)),
            mimetype="text/event-stream",
            headers={**headers, **SSE_HEADERS},
        )
        resp.call_on_close(client.close)  # the watch lasts as long as the stream
        streaming = True
        return resp
    finally:
        if not streaming:
            client.close()


def _model(route: ModelRoute, live: dict[str, int]) -> dict[str, object]:
    return model_body(
        route.id,
        route.created,
        route.primary.backend,
        available=live.get(route.id, 0) > 0,
        context_window=route.context_window,
        max_tokens=route.max_tokens,
        aliases=list(route.aliases),
    )


@bp.get("/models")
def list_models() -> Response:
    """Enabled registry models the caller's key may use; `available` says whether a live
    worker serves each one."""
    caller = current_caller()
    routes = [r for r in services().registry.get().models() if caller.allows(r.id)]
    live = services().live.counts(routes)
    return json_response({"object": "list", "data": [_model(r, live) for r in routes]})


@bp.get("/models/<path:model_id>")
def get_model(model_id: str) -> Response:
    route = services().registry.get().resolve(model_id)
    if route is None or not route.enabled or not current_caller().allows(route.id):
        raise ModelNotFoundError(
            f"The model `{model_id}` does not exist or you do not have access to it.",
            param="model",
        )
    return json_response(_model(route, services().live.counts([route])))
