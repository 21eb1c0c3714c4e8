"""Deployments, routing policy and fallbacks: the CRUD functions and what load_snapshot shows."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from registry import ModelRoute, RegistryError, add_backend, load_snapshot, set_backend_enabled
from registry.crud import add_deployment, add_model, remove_deployment, remove_model, set_model
from registry.errors import (
    DuplicateDeploymentError,
    InvalidValueError,
    UnknownBackendError,
    UnknownDeploymentError,
    UnknownModelError,
)
from registry.models import POLICIES
from registry.queries import DeploymentInfo


def route(fresh_registry: Engine, name: str) -> ModelRoute:
    found = load_snapshot(fresh_registry).resolve(name)
    assert found is not None, name
    return found


def test_seeded_model_has_one_primary_deployment(fresh_registry: Engine) -> None:
    smol = route(fresh_registry, "smollm2-135m")
    primary = DeploymentInfo(
        backend="local", kind="local", queue="local-mps", upstream="smollm2-135m",
        base_url=None, api_key_env=None, enabled=True, priority=0, weight=1.0,
    )  # fmt: skip
    assert smol.deployments == (primary,)
    assert smol.live_deployments() == (primary,) and smol.primary == primary
    assert (smol.policy, smol.fallbacks) == ("priority", ())
    mini = route(fresh_registry, "gpt-4o-mini")
    assert [d.backend for d in mini.deployments] == ["openai"]
    assert mini.live_deployments() == () and mini.enabled is False


def test_a_route_always_has_its_primary_deployment() -> None:
    """Hand-built routes (discovered llm-d models) carry their one deployment too."""
    gw = DeploymentInfo("gw", "llm-d", "llm-d", "m", "http://gw", None, enabled=True)
    built = ModelRoute("m", 10, 10, 0, 0, (), 0, deployments=(gw,))
    assert (built.primary, built.policy, built.fallbacks) == (gw, "priority", ())
    assert (gw.priority, gw.weight) == (0, 1.0)
    assert built.enabled and built.live_deployments() == (gw,)
    off = dataclasses.replace(built, deployments=(dataclasses.replace(gw, enabled=False),))
    assert not off.enabled and off.live_deployments() == ()
    with pytest.raises(ValueError, match="no deployment"):
        ModelRoute("m", 10, 10, 0, 0, (), 0, deployments=())


def test_admin_view_puts_the_primary_at_the_top_level(fresh_registry: Engine) -> None:
    """`GET /admin/models` shows the same keys, in the same order, as docs/api.md."""
    add_deployment(fresh_registry, "gpt-4o-mini", "local", upstream="tiny-mini")
    mini = route(fresh_registry, "gpt-4o-mini")
    view = mini.as_dict()
    assert list(view) == [
        "id", "backend", "kind", "queue", "upstream", "context_window", "max_tokens",
        "input_price", "output_price", "aliases", "base_url", "api_key_env", "enabled",
        "created", "deployments", "policy", "fallbacks",
    ]  # fmt: skip
    assert (view["backend"], view["kind"], view["queue"], view["upstream"]) == (
        "openai", "openai-compatible", "openai", "gpt-4o-mini",
    )  # fmt: skip
    assert view["base_url"] == "https://api.openai.com/v1"
    assert view["api_key_env"] == "OPENAI_API_KEY"
    assert view["enabled"] is True and view["created"] == mini.created
    assert view["deployments"] == [dataclasses.asdict(d) for d in mini.deployments]
    assert list(view["deployments"][1]) == [
        "backend", "kind", "queue", "upstream", "base_url", "api_key_env", "enabled",
        "priority", "weight",
    ]  # fmt: skip


def test_deployments_ordered_and_frozen(fresh_registry: Engine) -> None:
    add_backend(
        fresh_registry, "lab", "openai-compatible", base_url="http://lab/v1", api_key_env="LAB"
    )
    add_backend(fresh_registry, "zz", "local", queue="zz-q")
    add_deployment(
        fresh_registry, "smollm2", "llm-d", upstream="HF/SmolLM2", priority=2, weight=0.5
    )
    add_deployment(fresh_registry, "smollm2-135m", "zz")  # default priority 1, weight 1
    got = add_deployment(fresh_registry, "local", "lab", priority=1, weight=3)
    assert got == route(fresh_registry, "smollm2-135m")
    assert [(d.backend, d.priority) for d in got.deployments] == [
        ("local", 0), ("lab", 1), ("zz", 1), ("llm-d", 2),
    ]  # fmt: skip
    lab = got.deployments[1]
    assert lab == DeploymentInfo(
        backend="lab", kind="openai-compatible", queue="lab", upstream="smollm2-135m",
        base_url="http://lab/v1", api_key_env="LAB", enabled=True, priority=1, weight=3.0,
    )  # fmt: skip
    llmd = got.deployments[3]
    assert (llmd.upstream, llmd.weight, llmd.enabled) == ("HF/SmolLM2", 0.5, False)
    assert [d.backend for d in got.live_deployments()] == ["local", "lab", "zz"]
    p = got.primary
    assert (p.backend, p.queue, p.upstream) == ("local", "local-mps", "smollm2-135m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        lab.weight = 2  # type: ignore[misc]


def test_enabled_when_any_deployment_is(fresh_registry: Engine) -> None:
    add_deployment(fresh_registry, "gpt-4o-mini", "local", upstream="tiny-mini")
    mini = route(fresh_registry, "gpt-4o-mini")
    assert mini.enabled is True
    p = mini.primary  # a disabled primary stays the primary
    assert (p.backend, p.kind, p.queue) == ("openai", "openai-compatible", "openai")
    assert p.api_key_env == "OPENAI_API_KEY"
    assert [(d.backend, d.upstream) for d in mini.live_deployments()] == [("local", "tiny-mini")]
    assert "gpt-4o-mini" in [m.id for m in load_snapshot(fresh_registry).models()]
    set_backend_enabled(fresh_registry, "local", False)
    assert route(fresh_registry, "gpt-4o-mini").enabled is False
    assert load_snapshot(fresh_registry).models() == []


def test_remove_deployment_and_redeploy(fresh_registry: Engine) -> None:
    add_deployment(fresh_registry, "smollm2-135m", "llm-d")
    after = remove_deployment(fresh_registry, "smollm2", "llm-d")
    assert [d.backend for d in after.deployments] == ["local"]
    assert route(fresh_registry, "smollm2-135m") == after
    again = add_deployment(fresh_registry, "smollm2-135m", "llm-d", priority=4)
    assert [(d.backend, d.priority) for d in again.deployments] == [("local", 0), ("llm-d", 4)]


def test_set_policy_and_fallbacks(fresh_registry: Engine) -> None:
    got = set_model(
        fresh_registry,
        "smollm2",  # an alias names the model too
        policy="weighted",
        fallbacks=["gpt-4o-mini", "claude-sonnet-4-5-20250929", "gpt-4o-mini", "claude-sonnet-4-5"],
    )
    assert got.id == "smollm2-135m"
    assert (got.policy, got.fallbacks) == ("weighted", ("gpt-4o-mini", "claude-sonnet-4-5"))
    assert route(fresh_registry, "smollm2-135m") == got
    assert set_model(fresh_registry, "smollm2-135m", policy="latency").fallbacks == got.fallbacks
    cleared = set_model(fresh_registry, "smollm2-135m", fallbacks=[])
    assert (cleared.policy, cleared.fallbacks) == ("latency", ())
    for policy in POLICIES:
        assert set_model(fresh_registry, "smollm2-135m", policy=policy).policy == policy
    # mutual fallbacks are allowed; callers must not revisit a model
    set_model(fresh_registry, "gpt-4o", fallbacks=["gpt-4o-mini"])
    assert set_model(fresh_registry, "gpt-4o-mini", fallbacks=["gpt-4o"]).fallbacks == ("gpt-4o",)


def test_add_model_with_policy_and_fallbacks(fresh_registry: Engine) -> None:
    got = add_model(
        fresh_registry, "x", "local", policy="least-loaded", fallbacks=["local", "gpt-4o"]
    )
    assert (got.policy, got.fallbacks) == ("least-loaded", ("smollm2-135m", "gpt-4o"))
    assert [d.backend for d in got.deployments] == ["local"]
    assert route(fresh_registry, "x") == got


@pytest.mark.parametrize(
    ("call", "kwargs", "error", "message"),
    [
        (set_model, {"id": "ghost", "policy": "latency"}, UnknownModelError, "unknown model"),
        (set_model, {"id": "gpt-4o", "fallbacks": ["ghost"]}, UnknownModelError,
         "unknown fallback model 'ghost'"),
        (set_model, {"id": "gpt-4o", "fallbacks": ["gpt-4o"]}, InvalidValueError, "itself"),
        (set_model, {"id": "smollm2-135m", "fallbacks": ["gpt-4o", "local"]},
         InvalidValueError, r"cannot fall back to itself \('local'\)"),
        (set_model, {"id": "gpt-4o", "policy": "random"}, InvalidValueError,
         "unknown policy 'random'; valid policies: priority, least-loaded, latency, weighted"),
        (add_model, {"id": "x", "backend": "local", "fallbacks": ["x"]}, InvalidValueError,
         "itself"),
        (add_model, {"id": "x", "backend": "local", "fallbacks": ["no"]}, UnknownModelError,
         "fallback"),
        (add_model, {"id": "x", "backend": "local", "policy": "fast"}, InvalidValueError,
         "policy"),
        (add_deployment, {"model_id": "gpt-4o", "backend": "nope"}, UnknownBackendError,
         "unknown backend 'nope'"),
        (add_deployment, {"model_id": "ghost", "backend": "local"}, UnknownModelError, "ghost"),
        (add_deployment, {"model_id": "gpt-4o", "backend": "openai"}, DuplicateDeploymentError,
         "already served by backend 'openai' \\(its primary\\)"),
        (add_deployment, {"model_id": "gpt-4o-mini", "backend": "local"},
         DuplicateDeploymentError, "already has a deployment on backend 'local'"),
        (add_deployment, {"model_id": "gpt-4o", "backend": "local", "weight": 0},
         InvalidValueError, "weight must be a finite number > 0, got 0"),
        (add_deployment, {"model_id": "gpt-4o", "backend": "local", "weight": -1.5},
         InvalidValueError, "weight"),
        (add_deployment, {"model_id": "gpt-4o", "backend": "local", "weight": float("nan")},
         InvalidValueError, "weight"),
        (add_deployment, {"model_id": "gpt-4o", "backend": "local", "weight": float("inf")},
         InvalidValueError, "weight"),
        (add_deployment, {"model_id": "gpt-4o", "backend": "local", "weight": True},
         InvalidValueError, "weight"),
        (add_deployment, {"model_id": "gpt-4o", "backend": "local", "priority": -1},
         InvalidValueError, "priority must be an integer >= 0, got -1"),
        (add_deployment, {"model_id": "gpt-4o", "backend": "local", "priority": 1.5},
         InvalidValueError, "priority"),
        (add_deployment, {"model_id": "gpt-4o", "backend": "local", "upstream": "a b"},
         InvalidValueError, "upstream"),
        (remove_deployment, {"model_id": "gpt-4o", "backend": "openai"}, InvalidValueError,
         "backend 'openai' is the primary deployment of model 'gpt-4o' and cannot be undeployed"),
        (remove_deployment, {"model_id": "gpt-4o-mini", "backend": "grok"},
         UnknownDeploymentError, r"no deployment on backend 'grok' \(primary: openai; others: "
         r"local\)"),
        (remove_deployment, {"model_id": "ghost", "backend": "local"}, UnknownModelError,
         "ghost"),
    ],
)  # fmt: skip
def test_routing_errors(
    fresh_registry: Engine, call: Any, kwargs: dict, error: type, message: str
) -> None:
    add_deployment(fresh_registry, "gpt-4o-mini", "local")
    before = load_snapshot(fresh_registry).models(enabled_only=False)
    with pytest.raises(error, match=message) as info:
        call(fresh_registry, **kwargs)
    assert isinstance(info.value, RegistryError) and "\n" not in str(info.value)
    assert (
        load_snapshot(fresh_registry).models(enabled_only=False) == before
    )  # nothing half-written


def test_remove_model_cleans_deployments_and_fallbacks(fresh_registry: Engine) -> None:
    add_model(fresh_registry, "tmp", "local", aliases=["t"])
    add_deployment(fresh_registry, "tmp", "llm-d")
    set_model(fresh_registry, "smollm2-135m", fallbacks=["t", "gpt-4o"])
    set_model(fresh_registry, "gpt-4o", fallbacks=["tmp"])
    set_model(fresh_registry, "grok-4", fallbacks=["gpt-4o"])
    assert remove_model(fresh_registry, "tmp") == ["gpt-4o", "smollm2-135m"]
    assert route(fresh_registry, "smollm2-135m").fallbacks == ("gpt-4o",)
    assert route(fresh_registry, "gpt-4o").fallbacks == ()
    assert route(fresh_registry, "grok-4").fallbacks == ("gpt-4o",)
    with fresh_registry.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM deployment")).scalar() == 0
    fresh = add_model(fresh_registry, "tmp", "openai")  # the id is free again, with no leftovers
    assert [d.backend for d in fresh.deployments] == ["openai"]
    assert remove_model(fresh_registry, "tmp") == []


def test_snapshot_drops_dangling_and_malformed_fallbacks(fresh_registry: Engine) -> None:
    with fresh_registry.begin() as conn:
        conn.execute(text("""UPDATE model SET fallbacks='["ghost","gpt-4o"]' WHERE id='grok-4'"""))
        conn.execute(text("UPDATE model SET fallbacks='{oops' WHERE id='grok-3'"))
    assert route(fresh_registry, "grok-4").fallbacks == ("gpt-4o",)
    assert route(fresh_registry, "grok-3").fallbacks == ()


def test_database_keeps_one_deployment_per_backend(fresh_registry: Engine) -> None:
    """The unique key that turns a lost race into ConcurrentChangeError."""
    add_deployment(fresh_registry, "gpt-4o", "local")
    insert = "INSERT INTO deployment (model_id, backend, upstream, priority, weight) "
    with pytest.raises(IntegrityError), fresh_registry.begin() as conn:
        conn.execute(text(insert + "VALUES ('gpt-4o', 'local', 'other', 3, 1.0)"))
