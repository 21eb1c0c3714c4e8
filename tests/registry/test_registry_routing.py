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


def route(engine: Engine, name: str) -> ModelRoute:
    found = load_snapshot(engine).resolve(name)
    assert found is not None, name
    return found


def test_seeded_model_has_one_primary_deployment(engine: Engine) -> None:
    smol = route(engine, "smollm2-135m")
    primary = DeploymentInfo(
        backend="local", kind="local", queue="local-mps", upstream="smollm2-135m",
        base_url=None, api_key_env=None, enabled=True, priority=0, weight=1.0,
    )  # fmt: skip
    assert smol.deployments == (primary,)
    assert smol.live_deployments() == (primary,) and smol.primary() == primary
    assert (smol.policy, smol.fallbacks) == ("priority", ())
    mini = route(engine, "gpt-4o-mini")
    assert [d.backend for d in mini.deployments] == ["openai"]
    assert mini.live_deployments() == () and mini.enabled is False


def test_hand_built_route_keeps_working() -> None:
    """Routes built with only the old fields (discovered llm-d models) still route."""
    old = ModelRoute(
        id="m", backend="gw", kind="llm-d", queue="llm-d", upstream="m", context_window=10,
        max_tokens=10, input_price=0, output_price=0, aliases=(), base_url="http://gw",
        api_key_env=None, enabled=True, created=0,
    )  # fmt: skip
    assert (old.deployments, old.policy, old.fallbacks) == ((), "priority", ())
    (live,) = old.live_deployments()
    assert (live.backend, live.queue, live.upstream, live.priority, live.weight) == (
        "gw", "llm-d", "m", 0, 1.0,
    )  # fmt: skip
    assert dataclasses.replace(old, enabled=False).live_deployments() == ()


def test_deployments_ordered_and_frozen(engine: Engine) -> None:
    add_backend(engine, "lab", "openai-compatible", base_url="http://lab/v1", api_key_env="LAB")
    add_backend(engine, "zz", "local", queue="zz-q")
    add_deployment(engine, "smollm2", "llm-d", upstream="HF/SmolLM2", priority=2, weight=0.5)
    add_deployment(engine, "smollm2-135m", "zz")  # default priority 1, weight 1
    got = add_deployment(engine, "local", "lab", priority=1, weight=3)
    assert got == route(engine, "smollm2-135m")
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
    assert (got.backend, got.queue, got.upstream) == ("local", "local-mps", "smollm2-135m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        lab.weight = 2  # type: ignore[misc]


def test_enabled_when_any_deployment_is(engine: Engine) -> None:
    add_deployment(engine, "gpt-4o-mini", "local", upstream="tiny-mini")
    mini = route(engine, "gpt-4o-mini")
    assert mini.enabled is True
    assert (mini.backend, mini.kind, mini.queue) == ("openai", "openai-compatible", "openai")
    assert mini.api_key_env == "OPENAI_API_KEY"  # top-level fields stay the primary's
    assert [(d.backend, d.upstream) for d in mini.live_deployments()] == [("local", "tiny-mini")]
    assert "gpt-4o-mini" in [m.id for m in load_snapshot(engine).models()]
    set_backend_enabled(engine, "local", False)
    assert route(engine, "gpt-4o-mini").enabled is False
    assert load_snapshot(engine).models() == []


def test_remove_deployment_and_redeploy(engine: Engine) -> None:
    add_deployment(engine, "smollm2-135m", "llm-d")
    after = remove_deployment(engine, "smollm2", "llm-d")
    assert [d.backend for d in after.deployments] == ["local"]
    assert route(engine, "smollm2-135m") == after
    again = add_deployment(engine, "smollm2-135m", "llm-d", priority=4)
    assert [(d.backend, d.priority) for d in again.deployments] == [("local", 0), ("llm-d", 4)]


def test_set_policy_and_fallbacks(engine: Engine) -> None:
    got = set_model(
        engine,
        "smollm2",  # an alias names the model too
        policy="weighted",
        fallbacks=["gpt-4o-mini", "claude-sonnet-4-5-20250929", "gpt-4o-mini", "claude-sonnet-4-5"],
    )
    assert got.id == "smollm2-135m"
    assert (got.policy, got.fallbacks) == ("weighted", ("gpt-4o-mini", "claude-sonnet-4-5"))
    assert route(engine, "smollm2-135m") == got
    assert set_model(engine, "smollm2-135m", policy="latency").fallbacks == got.fallbacks
    cleared = set_model(engine, "smollm2-135m", fallbacks=[])
    assert (cleared.policy, cleared.fallbacks) == ("latency", ())
    for policy in POLICIES:
        assert set_model(engine, "smollm2-135m", policy=policy).policy == policy
    # mutual fallbacks are allowed; callers must not revisit a model
    set_model(engine, "gpt-4o", fallbacks=["gpt-4o-mini"])
    assert set_model(engine, "gpt-4o-mini", fallbacks=["gpt-4o"]).fallbacks == ("gpt-4o",)


def test_add_model_with_policy_and_fallbacks(engine: Engine) -> None:
    got = add_model(engine, "x", "local", policy="least-loaded", fallbacks=["local", "gpt-4o"])
    assert (got.policy, got.fallbacks) == ("least-loaded", ("smollm2-135m", "gpt-4o"))
    assert [d.backend for d in got.deployments] == ["local"]
    assert route(engine, "x") == got


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
def test_routing_errors(engine: Engine, call: Any, kwargs: dict, error: type, message: str) -> None:
    add_deployment(engine, "gpt-4o-mini", "local")
    before = load_snapshot(engine).models(enabled_only=False)
    with pytest.raises(error, match=message) as info:
        call(engine, **kwargs)
    assert isinstance(info.value, RegistryError) and "\n" not in str(info.value)
    assert load_snapshot(engine).models(enabled_only=False) == before  # nothing half-written


def test_remove_model_cleans_deployments_and_fallbacks(engine: Engine) -> None:
    add_model(engine, "tmp", "local", aliases=["t"])
    add_deployment(engine, "tmp", "llm-d")
    set_model(engine, "smollm2-135m", fallbacks=["t", "gpt-4o"])
    set_model(engine, "gpt-4o", fallbacks=["tmp"])
    set_model(engine, "grok-4", fallbacks=["gpt-4o"])
    assert remove_model(engine, "tmp") == ["gpt-4o", "smollm2-135m"]
    assert route(engine, "smollm2-135m").fallbacks == ("gpt-4o",)
    assert route(engine, "gpt-4o").fallbacks == ()
    assert route(engine, "grok-4").fallbacks == ("gpt-4o",)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM deployment")).scalar() == 0
    fresh = add_model(engine, "tmp", "openai")  # the id is free again, with no leftovers
    assert [d.backend for d in fresh.deployments] == ["openai"]
    assert remove_model(engine, "tmp") == []


def test_snapshot_drops_dangling_and_malformed_fallbacks(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("""UPDATE model SET fallbacks='["ghost","gpt-4o"]' WHERE id='grok-4'"""))
        conn.execute(text("UPDATE model SET fallbacks='{oops' WHERE id='grok-3'"))
    assert route(engine, "grok-4").fallbacks == ("gpt-4o",)
    assert route(engine, "grok-3").fallbacks == ()


def test_database_keeps_one_deployment_per_backend(engine: Engine) -> None:
    """The unique key that turns a lost race into ConcurrentChangeError."""
    add_deployment(engine, "gpt-4o", "local")
    insert = "INSERT INTO deployment (model_id, backend, upstream, priority, weight) "
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text(insert + "VALUES ('gpt-4o', 'local', 'other', 3, 1.0)"))
