"""Requests sized to stall the API are refused fast, before they are validated in full or
reach a worker: too many messages or parts, a body over MAX_CONTENT_LENGTH or too large for
any model's context window, a prompt too long for the model and all its fallbacks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from api.request_parts import MAX_PARTS, MAX_TOOLS
from api.schemas import BYTES_PER_TOKEN, MAX_MESSAGES, MIN_TEMPERATURE
from registry.crud import add_backend, add_model

ROOT = Path(__file__).resolve().parents[2]
WIDE_CONTEXT = 200_000  # tokens: 8 bytes each is more than MAX_CONTENT_LENGTH's 1 MiB


@pytest.fixture(scope="module")
def models(registry_db) -> dict[str, str]:
    """Models on a backend no worker serves (a request past the checks gets 503 after
    WORKER_WAIT): one of 8192 tokens, one wider than the body limit, and a narrow one
    that falls back to the wide one."""
    add_backend(registry_db, "limits-nowhere", "openai-compatible", queue="limits-nowhere")
    add_model(registry_db, "limits-model", "limits-nowhere", upstream="x", context_window=8192)
    add_model(
        registry_db, "limits-wide", "limits-nowhere", upstream="x", context_window=WIDE_CONTEXT
    )
    add_model(
        registry_db,
        "limits-narrow",
        "limits-nowhere",
        upstream="x",
        context_window=1000,
        max_tokens=100,
        fallbacks=["limits-wide"],
    )
    return {"model": "limits-model", "wide": "limits-wide", "narrow": "limits-narrow"}


def error_of(resp, status: int) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)[:500]
    return resp.get_json()["error"]


def ask(model: str, text: str = "Hi") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def test_more_messages_than_the_cap_is_a_400_naming_the_cap(client, models) -> None:
    body = {**ask(models["model"]), "messages": [{"role": "user", "content": "hi"}] * 2049}
    err = error_of(client.post("/v1/jobs", json=body), 400)
    assert err["param"] == "messages" and str(MAX_MESSAGES) in err["message"]
    assert "2049" in err["message"]


def test_more_content_parts_than_the_cap_is_a_400(client, models) -> None:
    parts = [{"type": "text", "text": "x"}] * (MAX_PARTS + 1)
    body = {**ask(models["model"]), "messages": [{"role": "user", "content": parts}]}
    err = error_of(client.post("/v1/jobs", json=body), 400)
    assert err["param"] == "messages.[0].content"
    assert str(MAX_PARTS) in err["message"] and "valid string" not in err["message"]


def test_a_body_over_the_default_limit_of_one_mib_is_413(client, models) -> None:
    body = ask(models["wide"], "x" * (1024 * 1024 + 1))  # fits the wide model's window
    err = error_of(client.post("/v1/jobs", json=body), 413)
    assert err["code"] == "request_too_large"


def test_a_body_too_large_for_every_enabled_model_is_413_before_it_is_read(
    app, client, models
) -> None:
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024
    routes = app.extensions["services"].registry.get().models()
    limit = max(r.context_window for r in routes) * BYTES_PER_TOKEN
    body = orjson.dumps(ask(models["wide"], "x" * limit))
    resp = client.post("/v1/jobs", data=body, content_type="application/json")
    err = error_of(resp, 413)
    assert err["code"] == "request_too_large"
    assert f"{limit // BYTES_PER_TOKEN} tokens" in err["message"]


def test_a_prompt_too_long_for_the_model_and_its_fallbacks_is_400_context_length_exceeded(
    client, models
) -> None:
    text = "x" * (8192 * BYTES_PER_TOKEN + 1)  # the body still fits the wide model
    started = time.monotonic()
    err = error_of(client.post("/v1/jobs", json=ask(models["model"], text)), 400)
    assert time.monotonic() - started < 1.0  # not after waiting for a worker
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert "8192 tokens" in err["message"]


def test_a_prompt_that_fits_a_fallback_is_not_refused_for_length(client, models) -> None:
    text = "x" * (1000 * BYTES_PER_TOKEN + 1)  # too long for limits-narrow alone
    err = error_of(client.post("/v1/jobs", json=ask(models["narrow"], text)), 503)
    assert err["code"] == "no_worker_available"  # it went on to look for a worker


def test_images_do_not_count_as_text(client, models) -> None:
    image = "data:image/png;base64," + "A" * (8192 * BYTES_PER_TOKEN)
    content = [{"type": "text", "text": "What is this?"}]
    content.append({"type": "image_url", "image_url": {"url": image}})
    body = {"model": models["model"], "messages": [{"role": "user", "content": content}]}
    err = error_of(client.post("/v1/jobs", json=body), 503)  # left to the model to count
    assert err["code"] == "no_worker_available"


def test_a_huge_body_is_refused_fast_and_the_server_stays_responsive(api_url, http) -> None:
    """7 MiB of 240,000 messages: refused from its Content-Length, while /healthz on the
    same server keeps answering at once."""
    messages = [{"role": "user", "content": "hi"}] * 240_000
    body = orjson.dumps({"model": "smollm2-135m", "messages": messages})
    assert len(body) > 7 * 1024 * 1024
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=api_url, timeout=30) as c:
            while not done.is_set():
                started = time.monotonic()
                assert c.get("/healthz").status_code == 200
                latencies.append(time.monotonic() - started)
                time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        time.sleep(0.2)
        started = time.monotonic()
        resp = http.post(
            "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
        )
        took = time.monotonic() - started
        time.sleep(0.2)
    finally:
        done.set()
        prober.join()
    assert resp.status_code == 413, resp.text[:500]
    assert resp.json()["error"]["code"] == "request_too_large"
    assert took < 2.0
    assert latencies and max(latencies) < 0.5


def test_the_docs_state_the_limits_in_force() -> None:
    page = (ROOT / "docs" / "api.md").read_text()
    table = page.split("### Limits\n", 1)[1].split("\n#", 1)[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ")]
    limits = {name.strip(): value.strip() for name, value, _ in rows}
    assert limits["messages"] == str(MAX_MESSAGES)
    assert limits["content parts in one message"] == str(MAX_PARTS)
    assert limits["tools, functions, tool calls in one message"] == str(MAX_TOOLS)
    per_token = f"{BYTES_PER_TOKEN} bytes per token"
    assert limits["request body, for every enabled model"].startswith(per_token)
    assert f"from {MIN_TEMPERATURE} to 2" in page
