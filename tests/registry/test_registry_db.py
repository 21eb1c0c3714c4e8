"""database_url, make_engine, init_db: seeding, env sync, and import hygiene."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, text

from registry import (
    DEFAULT_DATABASE_URL,
    KINDS,
    add_backend,
    database_url,
    init_db,
    load_snapshot,
    make_engine,
    set_backend_enabled,
)
from registry.seed import load_seed

ROOT = Path(__file__).resolve().parents[2]


def enabled(fresh_registry: Engine) -> dict[str, bool]:
    return {b.name: b.enabled for b in load_snapshot(fresh_registry).backends()}


def test_database_url_default_and_env() -> None:
    assert database_url({}) == DEFAULT_DATABASE_URL == "sqlite:///.run/router.db"
    assert database_url({"DATABASE_URL": ""}) == DEFAULT_DATABASE_URL
    assert database_url({"DATABASE_URL": "sqlite:////tmp/x.db"}) == "sqlite:////tmp/x.db"


def test_make_engine_creates_dir_and_sets_pragmas(tmp_path: Path) -> None:
    db = tmp_path / "a" / "b" / "r.db"
    fresh_registry = make_engine(f"sqlite:///{db}")
    assert db.parent.is_dir()
    with fresh_registry.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 10_000
    fresh_registry.dispose()


def test_in_memory_engine_shares_one_database() -> None:
    fresh_registry = make_engine("sqlite://")
    init_db(fresh_registry, {})
    assert load_snapshot(fresh_registry).resolve("smollm2") is not None


def test_seed_file_is_consistent() -> None:
    seed = load_seed()
    names = {b.name for b in seed.backends}
    assert names == {
        "local",
        "openai",
        "openrouter",
        "grok",
        "venice",
        "anthropic",
        "google",
        "llm-d",
    }
    assert all(b.kind in KINDS for b in seed.backends)
    ids = [m.id for m in seed.models]
    aliases = [a for m in seed.models for a in m.aliases]
    assert len(set(ids)) == len(ids)
    assert len(set(aliases)) == len(aliases)
    assert not set(ids) & set(aliases)
    assert {m.backend for m in seed.models} <= names - {"llm-d"}
    for m in seed.models:
        assert 0 < m.max_tokens <= m.context_window, m.id
        assert m.input_price >= 0 and m.output_price >= 0, m.id
        if m.backend in ("openrouter", "venice"):
            assert m.id == f"{m.backend}/{m.upstream}"
    # Keys are named, never stored: every api_key_env is an env var name.
    assert all(b.api_key_env is None or b.api_key_env.isupper() for b in seed.backends)


def test_init_db_seeds_everything(fresh_registry: Engine) -> None:
    snap = load_snapshot(fresh_registry)
    seed = load_seed()
    assert len(snap.models(enabled_only=False)) == len(seed.models)
    assert len(snap.backends()) == len(seed.backends)
    local = snap.resolve("smollm2-135m")
    assert local is not None
    p = local.primary
    assert (p.backend, p.queue, p.kind) == ("local", "local-mps", "local")
    assert (local.context_window, local.max_tokens) == (8192, 512)
    assert local.aliases == ("local", "smollm2")
    mini = snap.resolve("gpt-4o-mini")
    assert mini is not None
    assert (mini.context_window, mini.input_price, mini.output_price) == (128000, 0.15, 0.60)
    assert mini.primary.base_url == "https://api.openai.com/v1"
    assert mini.primary.api_key_env == "OPENAI_API_KEY"
    llmd = snap.backend("llm-d")
    assert llmd is not None and llmd.queue == "llm-d" and llmd.base_url is None
    assert not [m for m in snap.models(enabled_only=False) if m.primary.backend == "llm-d"]


def test_init_db_twice_does_not_reseed(fresh_registry: Engine) -> None:
    before = load_snapshot(fresh_registry).models(enabled_only=False)
    init_db(fresh_registry, {})
    init_db(fresh_registry, {})
    assert load_snapshot(fresh_registry).models(enabled_only=False) == before


def test_no_keys_only_local_enabled(fresh_registry: Engine) -> None:
    assert [n for n, on in enabled(fresh_registry).items() if on] == ["local"]
    assert [m.id for m in load_snapshot(fresh_registry).models()] == ["smollm2-135m"]


def test_seed_uses_env_on_first_start(db_url: str) -> None:
    fresh_registry = make_engine(db_url)
    init_db(fresh_registry, {"OPENAI_API_KEY": "sk-test", "LLMD_BASE_URL": "http://gw:8000"})
    state = enabled(fresh_registry)
    assert state["openai"] and state["llm-d"] and state["local"]
    assert not state["anthropic"] and not state["google"]


def test_env_sync_on_every_start(fresh_registry: Engine) -> None:
    init_db(fresh_registry, {"ANTHROPIC_API_KEY": "k", "GEMINI_API_KEY": "g"})
    state = enabled(fresh_registry)
    assert state["anthropic"] and state["google"] and not state["openai"]
    assert "claude-sonnet-4-5" in {m.id for m in load_snapshot(fresh_registry).models()}

    init_db(fresh_registry, {"GEMINI_API_KEY": ""})  # set but empty counts as absent
    state = enabled(fresh_registry)
    assert not state["anthropic"] and not state["google"]


def test_env_sync_leaves_operator_choices_alone(fresh_registry: Engine) -> None:
    add_backend(fresh_registry, "mine", "openai-compatible", api_key_env="MINE_KEY", enabled=True)
    add_backend(fresh_registry, "off", "llm-d", enabled=False)
    set_backend_enabled(fresh_registry, "local", False)  # local has no env gate
    init_db(fresh_registry, {"MINE_KEY": "", "OPENAI_API_KEY": "sk"})
    state = enabled(fresh_registry)
    assert state["mine"] is True and state["off"] is False and state["local"] is False
    assert state["openai"] is True


def test_init_db_without_sync_keeps_flags(fresh_registry: Engine) -> None:
    set_backend_enabled(fresh_registry, "openai", True)
    init_db(fresh_registry, {}, sync=False)
    assert enabled(fresh_registry)["openai"] is True
    init_db(fresh_registry, {})
    assert enabled(fresh_registry)["openai"] is False


def test_import_reads_nothing_and_pulls_in_no_other_layer(tmp_path: Path) -> None:
    code = (
        "import json, sys, registry, registry.cli\n"
        "banned = ('api', 'tasks', 'workers', 'flask', 'celery', 'redis')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in banned)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == []
    assert list(tmp_path.iterdir()) == []  # no database, no .run/, no lock file
