"""A registry file made by the release before deployments, and seeds with routing fields."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, inspect
from sqlmodel import Session, SQLModel

from registry import init_db, load_snapshot, make_engine
from registry.cli import models
from registry.crud import add_deployment, set_model
from registry.db import add_missing_columns
from registry.models import POLICIES
from registry.seed import apply_seed, fallback_ids, load_seed, parse_seed

# The schema exactly as the previous release's create_all wrote it: no policy, no
# fallbacks, no deployment table.
OLD_SCHEMA = """
CREATE TABLE backend (
    name VARCHAR NOT NULL, kind VARCHAR NOT NULL, queue VARCHAR NOT NULL, base_url VARCHAR,
    api_key_env VARCHAR, enabled BOOLEAN NOT NULL, created_at FLOAT NOT NULL,
    PRIMARY KEY (name)
);
CREATE TABLE model (
    id VARCHAR NOT NULL, backend VARCHAR NOT NULL, upstream VARCHAR NOT NULL,
    context_window INTEGER NOT NULL, max_tokens INTEGER NOT NULL, input_price FLOAT NOT NULL,
    output_price FLOAT NOT NULL, created_at FLOAT NOT NULL,
    PRIMARY KEY (id), FOREIGN KEY(backend) REFERENCES backend (name)
);
CREATE INDEX ix_model_backend ON model (backend);
CREATE TABLE alias (
    alias VARCHAR NOT NULL, model_id VARCHAR NOT NULL,
    PRIMARY KEY (alias), FOREIGN KEY(model_id) REFERENCES model (id)
);
CREATE INDEX ix_alias_model_id ON alias (model_id);
INSERT INTO backend VALUES ('local', 'local', 'local-mps', NULL, NULL, 1, 1700000000.0);
INSERT INTO backend VALUES ('gw', 'llm-d', 'llm-d', 'http://gw', NULL, 1, 1700000000.0);
INSERT INTO model VALUES ('old-a', 'local', 'a-up', 4096, 256, 0.0, 0.0, 1700000000.0);
INSERT INTO model VALUES ('old-b', 'local', 'b-up', 4096, 256, 1.0, 2.0, 1700000001.0);
INSERT INTO alias VALUES ('a', 'old-a');
"""


@pytest.fixture
def old_db(tmp_path: Path) -> str:
    """URL of a registry file in the old schema, with rows of its own (not the seed)."""
    path = tmp_path / "router.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    conn.close()
    return f"sqlite:///{path}"


def columns(fresh_registry: Engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(fresh_registry).get_columns(table)}


def test_init_db_migrates_an_old_file(old_db: str) -> None:
    fresh_registry = make_engine(old_db)
    assert "policy" not in columns(fresh_registry, "model")
    init_db(fresh_registry, {})
    snap = load_snapshot(fresh_registry)
    assert [m.id for m in snap.models()] == ["old-a", "old-b"]  # kept, not reseeded
    a = snap.resolve("a")
    assert a is not None and (a.id, a.primary.upstream, a.policy, a.fallbacks) == (
        "old-a", "a-up", "priority", (),
    )  # fmt: skip
    assert [(d.backend, d.upstream, d.priority) for d in a.deployments] == [("local", "a-up", 0)]
    # the new writes work on the migrated file
    add_deployment(fresh_registry, "old-a", "gw", upstream="org/a")
    got = set_model(fresh_registry, "old-a", policy="least-loaded", fallbacks=["old-b"])
    assert (got.policy, got.fallbacks) == ("least-loaded", ("old-b",))
    assert [d.backend for d in got.live_deployments()] == ["local", "gw"]
    init_db(fresh_registry, {})  # a second start changes nothing
    assert add_missing_columns(fresh_registry) == []
    assert load_snapshot(fresh_registry).resolve("old-a") == got
    fresh_registry.dispose()


def test_migrated_and_fresh_schemas_match(old_db: str, fresh_registry: Engine) -> None:
    old = make_engine(old_db)
    assert add_missing_columns(old) == ["model.policy", "model.fallbacks"]
    SQLModel.metadata.create_all(old)
    for table in ("backend", "model", "alias", "deployment"):
        assert columns(old, table) == columns(fresh_registry, table), table
    old.dispose()


def test_cli_lists_an_old_file(old_db: str) -> None:
    result = CliRunner(env={"DATABASE_URL": old_db}).invoke(models, ["list"])
    assert result.exit_code == 0, result.output
    row = result.stdout.splitlines()[1].split()
    assert row[0] == "old-a" and row[-3:] == ["priority", "-", "-"]


SEED: dict[str, Any] = {
    "backends": [
        {"name": "local", "kind": "local", "queue": "local-mps"},
        {"name": "gw", "kind": "llm-d", "queue": "llm-d", "enable_if_env": "GW_URL"},
    ],
    "models": [
        {"id": "big", "backend": "gw", "context_window": 8, "max_tokens": 8, "aliases": ["b"]},
        {
            "id": "small",
            "backend": "local",
            "upstream": "small-up",
            "context_window": 8,
            "max_tokens": 8,
            "policy": "weighted",
            "fallbacks": ["b", "big"],
            "deployments": [
                {"backend": "gw", "upstream": "org/small", "priority": 2, "weight": 3},
            ],
        },
    ],
}


def test_seed_applies_policy_fallbacks_and_deployments(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = parse_seed(SEED)
    monkeypatch.setattr("registry.db.load_seed", lambda: seed)
    fresh_registry = make_engine(db_url)
    init_db(fresh_registry, {"GW_URL": "http://gw"})
    small = load_snapshot(fresh_registry).resolve("small")
    assert small is not None
    assert (small.policy, small.fallbacks) == ("weighted", ("big",))
    assert [(d.backend, d.upstream, d.priority, d.weight) for d in small.deployments] == [
        ("local", "small-up", 0, 1.0),
        ("gw", "org/small", 2, 3.0),
    ]
    big = load_snapshot(fresh_registry).resolve("big")
    assert big is not None and (big.policy, big.fallbacks, len(big.deployments)) == (
        "priority", (), 1,
    )  # fmt: skip
    fresh_registry.dispose()


@pytest.mark.parametrize(("fallbacks", "message"), [(["ghost"], "unknown"), (["small"], "itself")])
def test_seed_fallback_errors(fallbacks: list[str], message: str) -> None:
    raw = {**SEED, "models": [SEED["models"][0], {**SEED["models"][1], "fallbacks": fallbacks}]}
    seed = parse_seed(raw)
    fresh_registry = make_engine("sqlite://")
    SQLModel.metadata.create_all(fresh_registry)
    with Session(fresh_registry) as session, pytest.raises(ValueError, match=message):
        apply_seed(session, seed, {}, time.time())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"policy": "random"}, "unknown policy 'random'"),
        ({"deployments": [{"backend": "gw", "weight": 0}]}, "weight > 0"),
        ({"deployments": [{"backend": "gw", "priority": -1}]}, "priority must be >= 0"),
        ({"deployments": [{"backend": "local"}]}, "deployed twice on one backend"),
    ],
)
def test_seed_parse_errors(change: dict[str, Any], message: str) -> None:
    raw = {**SEED, "models": [SEED["models"][0], {**SEED["models"][1], **change}]}
    with pytest.raises(ValueError, match=message):
        parse_seed(raw)


def test_shipped_seed_routing_fields() -> None:
    """The shipped models keep today's behaviour: default policy, no fallbacks, one backend."""
    seed = load_seed()
    for m in seed.models:
        assert m.policy in POLICIES and m.policy == "priority", m.id
        assert m.fallbacks == () and fallback_ids(seed, m) == [], m.id
        assert m.deployments == (), m.id
