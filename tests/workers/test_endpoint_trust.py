"""A worker reaches a backend through its own configuration only: nothing in a job (which
anyone who can write to Redis can write) picks the URL, the key variable or a credential
header; and the registry's seeded base URLs and key variables are the workers' own."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest

from workers.errors import RouterError
from workers.protocol import ChatJob
from workers.providers import KEY_ALLOWLIST, backend_endpoint, endpoint, queue_kind

SECRET = "AKIA-not-a-provider-key-0123456789"


def job(backend: str, **kw: Any) -> ChatJob:
    fields: dict[str, Any] = {
        "id": "job_1",
        "model": "m",
        "backend": backend,
        "kind": "openai-compatible",
        "upstream_model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        **kw,
    }
    return ChatJob(**fields)


def test_the_jobs_base_url_is_never_used() -> None:
    crafted = job("openai", base_url="http://127.0.0.1:9/v1", api_key_env="OPENAI_API_KEY")
    env = {"OPENAI_API_KEY": "sk-real-0123456789"}
    assert endpoint(crafted, env).base_url == "https://api.openai.com/v1"  # providers.json
    env["OPENAI_BASE_URL"] = "http://proxy.internal/v1"
    assert endpoint(crafted, env).base_url == "http://proxy.internal/v1"
    # an operator-added backend has no default: the worker must be told, not the job
    with pytest.raises(RouterError, match="MINE_BASE_URL") as info:
        endpoint(job("mine", base_url="http://127.0.0.1:9/v1"), {"MINE_API_KEY": "k"})
    assert info.value.code == "worker_misconfigured"


def test_a_key_variable_the_worker_does_not_allow_is_never_read() -> None:
    env = {"SOME_SECRET": SECRET, "OPENAI_API_KEY": "sk-real-0123456789"}
    with pytest.raises(RouterError) as info:
        endpoint(job("openai", api_key_env="SOME_SECRET"), env)
    assert info.value.code == "key_env_not_allowed" and not info.value.upstream
    assert "SOME_SECRET" in info.value.message and KEY_ALLOWLIST in info.value.message
    assert SECRET not in info.value.message
    # another provider's key is not this backend's either
    env["ANTHROPIC_API_KEY"] = "sk-ant-0123456789"
    with pytest.raises(RouterError, match="ANTHROPIC_API_KEY"):
        endpoint(job("openai", api_key_env="ANTHROPIC_API_KEY"), env)


def test_the_backends_own_variable_and_allowlisted_ones_are_read() -> None:
    env = {"OPENAI_API_KEY": "sk-real-0123456789", "MINE_TOKEN": "mine-0123456789"}
    assert endpoint(job("openai"), env).key == "sk-real-0123456789"
    assert endpoint(job("openai", api_key_env="OPENAI_API_KEY"), env).key == "sk-real-0123456789"
    env["MINE_BASE_URL"] = "http://mine.internal/v1"
    with pytest.raises(RouterError, match="MINE_TOKEN"):
        endpoint(job("mine", api_key_env="MINE_TOKEN"), env)
    env[KEY_ALLOWLIST] = "OTHER_KEY, MINE_TOKEN"
    assert endpoint(job("mine", api_key_env="MINE_TOKEN"), env).key == "mine-0123456789"


def test_forwarded_headers_never_replace_the_workers_own() -> None:
    env = {"LLMD_BASE_URL": "http://gw/v1", "LLMD_API_KEY": "llmd-0123456789"}
    env["LLMD_HEADERS"] = '{"x-llm-d-pool": "gpu-a"}'
    sent = {
        "x-session-token": "s-1",
        "Authorization": "Bearer attacker",
        "Host": "evil.example",
        "X-LLM-D-Pool": "cpu",
    }
    ep = endpoint(job("llm-d", kind="llm-d", headers=sent), env, key_required=False)
    assert ep.headers == {"x-llm-d-pool": "gpu-a", "x-session-token": "s-1"}
    assert ep.key == "llmd-0123456789"


def test_a_queue_serves_the_kind_its_worker_is_configured_for() -> None:
    assert queue_kind("openai", {}) == "openai-compatible"
    assert queue_kind("anthropic", {"ANTHROPIC_KIND": "local"}) == "anthropic"  # the table wins
    assert queue_kind("local-mps", {}) == "local"
    assert queue_kind("mine", {}) == "local"
    assert queue_kind("mine", {"MINE_KIND": "openai-compatible"}) == "openai-compatible"


def test_the_registry_seed_names_what_the_workers_use() -> None:
    """The seed's base_url and api_key_env are shown by `irouter backends list` and sent
    with every job; a worker uses its own: they must agree, or the registry misleads."""
    seed = json.loads(resources.files("registry").joinpath("seed.json").read_text())
    for backend in seed["backends"]:
        name, queue = backend["name"], backend["queue"]
        assert queue_kind(queue, {}) == backend["kind"], name
        if backend["kind"] == "local":
            continue
        assert queue == name, f"{name}: a provider backend is served on the queue of its name"
        ep = backend_endpoint(name, {backend["api_key_env"]: "k-0123456789"})
        assert ep.base_url == backend.get("base_url"), name
        assert ep.key == "k-0123456789", f"{name}: {backend['api_key_env']} is not its own"
