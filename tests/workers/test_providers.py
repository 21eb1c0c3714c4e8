"""Provider endpoints: base URL, key, headers and timeouts from providers.json and the env."""

from __future__ import annotations

import pytest

from workers.errors import AuthenticationError, RouterError
from workers.protocol import ChatJob
from workers.providers import endpoint, env_prefix, provider_table

ALLOW = {"ROUTER_KEY_ENV_ALLOWLIST": "SOME_KEY"}  # the registry's key variable, allowed


def job(backend: str, **kw: object) -> ChatJob:
    fields: dict[str, object] = dict(
        id="job_1",
        model="m",
        backend=backend,
        kind="openai-compatible",
        upstream_model="m",
        messages=[{"role": "user", "content": "hi"}],
        base_url="https://registry.example/v1",
        api_key_env="SOME_KEY",
    )
    fields.update(kw)
    return ChatJob(**fields)  # type: ignore[arg-type]


def test_every_design_backend_is_configured() -> None:
    names = {"openai", "openrouter", "grok", "venice", "anthropic", "google", "llm-d"}
    assert names <= set(provider_table())
    assert env_prefix("grok") == "XAI" and env_prefix("google") == "GEMINI"
    assert env_prefix("my-cluster") == "MY_CLUSTER"  # operator-added backends


def test_env_overrides_the_default_base_url_and_key_comes_from_an_allowed_var() -> None:
    env = {"SOME_KEY": "k-123456789", "XAI_BASE_URL": "http://fake/v1", **ALLOW}
    ep = endpoint(job("grok"), env)
    assert ep.base_url == "http://fake/v1" and ep.key == "k-123456789"
    assert "k-123456789" not in repr(ep)
    ep = endpoint(job("grok"), {"SOME_KEY": "k", **ALLOW})
    assert ep.base_url == "https://api.x.ai/v1"  # providers.json's, never the job's


def test_missing_key_is_a_clear_401() -> None:
    with pytest.raises(AuthenticationError, match="SOME_KEY"):
        endpoint(job("openai"), ALLOW)
    with pytest.raises(AuthenticationError, match="OPENAI_API_KEY"):
        endpoint(job("openai", api_key_env=None), {})


def test_missing_base_url_is_reported() -> None:
    with pytest.raises(RouterError, match="LLMD_BASE_URL"):
        endpoint(job("llm-d", base_url=None), ALLOW, key_required=False)


def test_static_headers_from_config_and_env() -> None:
    env = {"SOME_KEY": "k", "OPENROUTER_HEADERS": '{"X-Title": "me"}', **ALLOW}
    ep = endpoint(job("openrouter"), env)
    assert ep.headers["X-Title"] == "me" and "HTTP-Referer" in ep.headers
    with pytest.raises(RouterError, match="OPENROUTER_HEADERS"):
        endpoint(job("openrouter"), {**env, "OPENROUTER_HEADERS": "[1]"})


def test_request_headers_are_forwarded_only_where_configured() -> None:
    sticky = {"x-session-token": "abc"}
    env = {
        "SOME_KEY": "k",
        "LLMD_BASE_URL": "http://gw/v1",
        "LLMD_HEADERS": '{"x-a": "1"}',
        **ALLOW,
    }
    ep = endpoint(job("llm-d", headers=sticky), env, key_required=False)
    assert ep.headers == {"x-a": "1", "x-session-token": "abc"}
    assert ep.timeout == 900
    assert "x-session-token" not in endpoint(job("openai", headers=sticky), env).headers
