"""Snapshot lookups and the CRUD functions with their errors."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import Engine, event

from registry import (
    AliasInUseError,
    DuplicateBackendError,
    DuplicateModelError,
    InvalidValueError,
    ModelRoute,
    RegistryError,
    UnknownBackendError,
    UnknownKindError,
    UnknownModelError,
    add_backend,
    add_model,
    load_snapshot,
    remove_model,
    set_backend_enabled,
)
from registry.crud import add_deployment


def test_resolve_by_id_and_alias(fresh_registry: Engine) -> None:
    snap = load_snapshot(fresh_registry)
    by_id = snap.resolve("smollm2-135m")
    assert isinstance(by_id, ModelRoute)
    assert snap.resolve("smollm2") == by_id
    assert snap.resolve("local") == by_id
    assert snap.resolve("SmolLM2") is None  # exact match only
    assert snap.resolve("smollm") is None
    assert snap.resolve("") is None


def test_resolve_returns_disabled_models_with_flag(fresh_registry: Engine) -> None:
    route = load_snapshot(fresh_registry).resolve("claude-sonnet-4-5")
    assert route is not None
    assert route.enabled is False
    assert (route.primary.upstream, route.primary.queue, route.primary.kind) == (
        "claude-sonnet-4-5-20250929",
        "anthropic",
        "anthropic",
    )


def test_models_filter_and_order(fresh_registry: Engine) -> None:
    snap = load_snapshot(fresh_registry)
    every = snap.models(enabled_only=False)
    assert [m.id for m in every] == sorted(m.id for m in every)
    assert [m.id for m in snap.models()] == ["smollm2-135m"]
    set_backend_enabled(fresh_registry, "grok", True)
    ids = [m.id for m in load_snapshot(fresh_registry).models()]
    assert ids == ["grok-3", "grok-3-mini", "grok-4", "smollm2-135m"]


def test_snapshot_is_five_selects_and_frozen(fresh_registry: Engine) -> None:
    for i in range(5):
        add_model(fresh_registry, f"m{i}", "local", aliases=[f"a{i}", f"b{i}"], fallbacks=["local"])
        add_deployment(fresh_registry, f"m{i}", "llm-d")
        add_deployment(fresh_registry, f"m{i}", "openai", priority=2)
    statements: list[str] = []
    event.listen(fresh_registry, "before_cursor_execute", lambda *a, **k: statements.append(a[2]))
    snap = load_snapshot(fresh_registry)
    assert len(statements) == 5, statements  # backends, models, aliases, deployments, keys
    route = snap.resolve("b3")
    assert route is not None and route.id == "m3"
    with pytest.raises(dataclasses.FrozenInstanceError):
        route.enabled = False  # type: ignore[misc]


def test_add_model_defaults_and_route(fresh_registry: Engine) -> None:
    route = add_model(fresh_registry, "tiny", "local", aliases=("t",))
    assert route.primary.upstream == "tiny"
    assert (route.context_window, route.max_tokens) == (8192, 1024)
    assert (route.input_price, route.output_price) == (0.0, 0.0)
    assert route.primary.queue == "local-mps" and route.enabled
    assert load_snapshot(fresh_registry).resolve("t") == route


def test_add_model_on_operator_backend(fresh_registry: Engine) -> None:
    add_backend(fresh_registry, "lab", "openai-compatible", base_url="http://lab:8000/v1")
    route = add_model(
        fresh_registry,
        "lab/qwen",
        "lab",
        upstream="Qwen/Qwen2.5-7B-Instruct",
        context_window=32768,
        max_tokens=4096,
        input_price=0.1,
        output_price=0.2,
    )
    assert route.primary.queue == "lab" and route.primary.base_url == "http://lab:8000/v1"
    assert route.cost_usd(1_000_000, 500_000) == pytest.approx(0.2)
    assert load_snapshot(fresh_registry).resolve("lab/qwen") == route


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"id": "x", "backend": "nope"}, UnknownBackendError, "unknown backend 'nope'"),
        ({"id": "gpt-4o", "backend": "local"}, DuplicateModelError, "already exists"),
        ({"id": "smollm2", "backend": "local"}, DuplicateModelError, "alias of model"),
        ({"id": "x", "backend": "local", "aliases": ["local"]}, AliasInUseError, "already names"),
        ({"id": "x", "backend": "local", "aliases": ["gpt-4o"]}, AliasInUseError, "id of an"),
        ({"id": "x", "backend": "local", "aliases": ["x"]}, AliasInUseError, "own id"),
        ({"id": "x", "backend": "local", "aliases": ["y", "y"]}, AliasInUseError, "repeat"),
        ({"id": "x", "backend": "local", "context_window": 0}, InvalidValueError, "positive"),
        ({"id": "x", "backend": "local", "max_tokens": -1}, InvalidValueError, "max_tokens"),
        (
            {"id": "x", "backend": "local", "context_window": 100, "max_tokens": 200},
            InvalidValueError,
            "must not exceed",
        ),
        ({"id": "x", "backend": "local", "input_price": -0.01}, InvalidValueError, ">= 0"),
        (
            {"id": "x", "backend": "local", "output_price": float("nan")},
            InvalidValueError,
            "finite",
        ),
        ({"id": "x", "backend": "local", "input_price": float("inf")}, InvalidValueError, "fin"),
        ({"id": "x", "backend": "local", "context_window": True}, InvalidValueError, "integer"),
        ({"id": "", "backend": "local"}, InvalidValueError, "model id"),
        ({"id": "a b", "backend": "local"}, InvalidValueError, "no spaces"),
    ],
)
def test_add_model_errors(fresh_registry: Engine, kwargs: dict, error: type, message: str) -> None:
    before = load_snapshot(fresh_registry).models(enabled_only=False)
    with pytest.raises(error, match=message) as info:
        add_model(fresh_registry, **kwargs)
    assert isinstance(info.value, RegistryError) and isinstance(info.value, ValueError)
    assert (
        load_snapshot(fresh_registry).models(enabled_only=False) == before
    )  # nothing half-written


def test_remove_model_removes_aliases(fresh_registry: Engine) -> None:
    add_model(fresh_registry, "tmp", "local", aliases=["tmp-a", "tmp-b"])
    remove_model(fresh_registry, "tmp")
    snap = load_snapshot(fresh_registry)
    assert snap.resolve("tmp") is None and snap.resolve("tmp-a") is None
    assert "tmp-a" not in snap.aliases
    # the freed names can be used again
    add_model(fresh_registry, "tmp-a", "local", aliases=["tmp"])
    route = load_snapshot(fresh_registry).resolve("tmp")
    assert route is not None and route.id == "tmp-a"


def test_remove_model_errors(fresh_registry: Engine) -> None:
    with pytest.raises(UnknownModelError, match=r"^unknown model 'ghost'$"):
        remove_model(fresh_registry, "ghost")
    with pytest.raises(UnknownModelError, match="alias of 'smollm2-135m'"):
        remove_model(fresh_registry, "smollm2")
    assert load_snapshot(fresh_registry).resolve("smollm2") is not None


def test_add_backend_and_toggle(fresh_registry: Engine) -> None:
    info = add_backend(
        fresh_registry, "gpu-box", "llm-d", base_url="http://gw", api_key_env="GW_KEY"
    )
    assert (info.queue, info.enabled, info.api_key_env) == ("gpu-box", True, "GW_KEY")
    assert load_snapshot(fresh_registry).backend("gpu-box") == info
    off = set_backend_enabled(fresh_registry, "gpu-box", False)
    assert off.enabled is False
    assert load_snapshot(fresh_registry).backend("gpu-box") == off
    q = add_backend(fresh_registry, "mac2", "local", queue="local-mps", enabled=False)
    assert q.queue == "local-mps" and not q.enabled


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": "openai", "kind": "openai-compatible"}, DuplicateBackendError, "exists"),
        ({"name": "x", "kind": "vllm"}, UnknownKindError, "valid kinds: local, openai-comp"),
        ({"name": "x", "kind": "local", "api_key_env": "sk-abc123"}, InvalidValueError, "NAME"),
        ({"name": "x", "kind": "local", "base_url": "gw:80"}, InvalidValueError, "http"),
        ({"name": "", "kind": "local"}, InvalidValueError, "backend name"),
        ({"name": "x", "kind": "local", "queue": "a b"}, InvalidValueError, "queue"),
    ],
)
def test_add_backend_errors(
    fresh_registry: Engine, kwargs: dict, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        add_backend(fresh_registry, **kwargs)
    assert load_snapshot(fresh_registry).backend("x") is None


def test_set_backend_enabled_unknown(fresh_registry: Engine) -> None:
    with pytest.raises(UnknownBackendError, match=r"unknown backend 'zzz' \(known: anthropic"):
        set_backend_enabled(fresh_registry, "zzz", True)
