"""llm-d against a real third-party OpenAI-compatible server: `python -m llama_cpp.server`
on the SmolLM2 GGUF, found by the llm-d worker's discovery and called through the API.

Skipped unless llama-cpp-python and its server extras are installed (they build from
source in about ten minutes, so CI does not install them).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Stack, Worker, free_port, wait_until

pytest.importorskip("llama_cpp")
pytest.importorskip("uvicorn")  # llama_cpp.server's extras
pytest.importorskip("sse_starlette")

ALIAS = "smollm2-llamacpp"


def _gguf() -> Path:
    from workers.local.loading import default_model_ref

    return Path(default_model_ref())


@pytest.fixture(scope="module")
def cluster(
    stack: Stack, start_worker: Callable[..., Worker], start_api: Callable[..., str]
) -> Iterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf()), "--model_alias"]
    args += [ALIAS, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    args += ["--interrupt_requests", "False"]  # else each discovery poll cuts a stream short
    server = stack.spawn("llamacpp", args)
    base = f"http://127.0.0.1:{port}/v1"
    wait_until(lambda: _ok(base + "/models"), 60, "llama_cpp.server", stack.tmp / "llamacpp.log")
    worker = start_worker("llm-d", concurrency=20, LLMD_BASE_URL=base, LLMD_POLL_INTERVAL="0.5")
    api = start_api(
        "api-llamacpp",
        DATABASE_URL=f"sqlite:///{stack.tmp / 'llamacpp.db'}",
        ROUTER_REGISTRY_TTL="0.2",
        LLMD_BASE_URL=base,
    )
    yield api
    worker.stop()
    server.terminate()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_llamacpp_model_is_discovered_and_served(cluster: str) -> None:
    def listed() -> bool:
        models = httpx.get(cluster + "/v1/models", timeout=5).json()["data"]
        return any(m["id"] == ALIAS and m["available"] for m in models)

    wait_until(listed, 30, "the llama.cpp model in /v1/models")
    client = openai.OpenAI(base_url=cluster + "/v1", api_key="none", max_retries=0, timeout=120)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    resp = client.chat.completions.create(
        model=ALIAS, messages=question, max_tokens=16, temperature=0
    )
    assert resp.choices[0].message.content
    assert resp.choices[0].finish_reason in ("stop", "length")
    # llama_cpp.server ignores stream_options.include_usage, and the worker always streams
    # from its upstream: the usage it can report is zero (vLLM and llm-d send real counts)
    assert resp.usage is not None and resp.usage.total_tokens == 0

    stream = client.chat.completions.create(
        model=ALIAS, messages=question, max_tokens=16, temperature=0, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == resp.choices[0].message.content  # greedy: the same answer both ways
