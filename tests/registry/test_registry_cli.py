"""The `models` and `backends` click groups, driven through CliRunner on a real file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from registry.cli import backends, models
from registry.seed import load_seed

KEYS = {b.enable_if_env for b in load_seed().backends if b.enable_if_env}
Invoke = Callable[..., Result]


@pytest.fixture
def run(db_url: str) -> Invoke:
    """Invoke a group with DATABASE_URL at a fresh file and no provider keys set."""
    env: dict[str, str | None] = {"DATABASE_URL": db_url, **dict.fromkeys(KEYS)}

    def invoke(group: click.Group, *args: str, **extra: str) -> Result:
        return CliRunner(env={**env, **extra}).invoke(group, list(args))

    return invoke


def assert_usage_error(result: Result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [f"Error: {message}"]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_list_on_fresh_machine_creates_db(run: Invoke, db_url: str) -> None:
    result = run(models, "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID", "BACKEND", "UPSTREAM", "CONTEXT", "MAX_TOKENS", "IN$/1M", "OUT$/1M", "ALIASES",
        "ENABLED", "POLICY", "FALLBACKS", "DEPLOYMENTS",
    ]  # fmt: skip
    assert lines[1].split() == [
        "smollm2-135m", "local", "smollm2-135m", "8192", "512", "0.00", "0.00", "local,smollm2",
        "yes", "priority", "-", "-",
    ]  # fmt: skip
    assert len(lines) == 2
    assert Path(db_url.removeprefix("sqlite:///")).is_file()


def test_list_all_and_json(run: Invoke) -> None:
    table = run(models, "list", "--all").stdout
    row = next(line.split() for line in table.splitlines() if line.startswith("gpt-4o-mini "))
    assert row == ["gpt-4o-mini", "openai", "gpt-4o-mini", "128000", "16384", "0.15", "0.60",
                   "-", "no", "priority", "-", "-"]  # fmt: skip
    data = json.loads(run(models, "list", "--all", "--json").stdout)
    assert len(data) == len(load_seed().models)
    sonnet = next(m for m in data if m["id"] == "claude-sonnet-4-5")
    assert sonnet["context_window"] == 200000 and sonnet["output_price"] == 15.0
    assert sonnet["enabled"] is False and sonnet["api_key_env"] == "ANTHROPIC_API_KEY"
    assert (sonnet["policy"], sonnet["fallbacks"]) == ("priority", [])
    assert [d["backend"] for d in sonnet["deployments"]] == ["anthropic"]
    assert sonnet["deployments"][0]["upstream"] == "claude-sonnet-4-5-20250929"
    assert [m["id"] for m in json.loads(run(models, "list", "--json").stdout)] == ["smollm2-135m"]


def test_add_list_remove_model(run: Invoke) -> None:
    result = run(
        models, "add", "qwen-0.5b", "--backend", "local", "--upstream", "Qwen/Qwen2.5-0.5B",
        "--context-window", "32768", "--max-tokens", "2048", "--input-price", "0.05",
        "--output-price", "0.1", "--alias", "qwen", "--alias", "q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "added model qwen-0.5b (backend local, upstream Qwen/Qwen2.5-0.5B)\n"
    rows = [line.split() for line in run(models, "list").stdout.splitlines()]
    assert ["qwen-0.5b", "local", "Qwen/Qwen2.5-0.5B", "32768", "2048", "0.05", "0.10", "q,qwen",
            "yes", "priority", "-", "-"] in rows  # fmt: skip

    assert_usage_error(
        run(models, "add", "other", "--backend", "local", "--alias", "qwen"),
        "alias 'qwen' already names model 'qwen-0.5b'",
    )
    result = run(models, "remove", "qwen-0.5b")
    assert (result.exit_code, result.stdout) == (0, "removed model qwen-0.5b\n")
    assert "qwen" not in run(models, "list").stdout
    assert_usage_error(run(models, "remove", "qwen-0.5b"), "unknown model 'qwen-0.5b'")


def test_model_errors_exit_2_with_one_line(run: Invoke) -> None:
    result = run(models, "add", "x", "--backend", "nope")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: unknown backend 'nope' (known: anthropic, google")
    assert len(result.stderr.strip().splitlines()) == 1
    assert_usage_error(
        run(models, "add", "gpt-4o", "--backend", "openai"), "model 'gpt-4o' already exists"
    )
    assert_usage_error(
        run(models, "add", "x", "--backend", "local", "--context-window", "0"),
        "context_window must be a positive integer, got 0",
    )
    assert_usage_error(
        run(models, "add", "x", "--backend", "local", "--input-price", "-1"),
        "input_price must be a finite number >= 0, got -1.0",
    )
    assert run(models, "add", "x").exit_code == 2  # missing --backend: click's own usage error


def test_add_model_on_disabled_backend_notes_it(run: Invoke) -> None:
    result = run(models, "add", "o3-mini", "--backend", "openai")
    assert result.exit_code == 0
    assert "backend openai is disabled" in result.stdout


def test_backends_add_list_enable_disable(run: Invoke) -> None:
    result = run(
        backends, "add", "lab", "--kind", "openai-compatible", "--base-url", "http://lab/v1",
        "--key-env", "LAB_KEY", "--disabled",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "added backend lab (openai-compatible, queue lab, disabled)\n"
    rows = {line.split()[0]: line.split() for line in run(backends, "list").stdout.splitlines()}
    assert rows["NAME"] == ["NAME", "KIND", "QUEUE", "BASE_URL", "KEY_ENV", "ENABLED"]
    assert rows["lab"] == ["lab", "openai-compatible", "lab", "http://lab/v1", "LAB_KEY", "no"]
    assert rows["local"] == ["local", "local", "local-mps", "-", "-", "yes"]

    assert run(backends, "enable", "lab").stdout == "backend lab enabled\n"
    data = {b["name"]: b for b in json.loads(run(backends, "list", "--json").stdout)}
    assert data["lab"]["enabled"] is True and data["openai"]["enabled"] is False
    assert run(backends, "disable", "lab").stdout == "backend lab disabled\n"
    assert json.loads(run(backends, "list", "--json").stdout)[3]["name"] == "lab"


def test_disable_sticks_even_with_key_in_cli_env(run: Invoke) -> None:
    result = run(backends, "enable", "openai")
    assert "re-syncs openai from $OPENAI_API_KEY" in result.stdout
    run(backends, "disable", "openai", OPENAI_API_KEY="sk-test")
    listed = run(backends, "list", "--json", OPENAI_API_KEY="sk-test").stdout
    assert {b["name"]: b["enabled"] for b in json.loads(listed)}["openai"] is False


def test_backend_errors_exit_2(run: Invoke) -> None:
    assert_usage_error(
        run(backends, "add", "x", "--kind", "vllm"),
        "unknown kind 'vllm'; valid kinds: local, openai-compatible, anthropic, google, llm-d",
    )
    assert_usage_error(
        run(backends, "add", "openai", "--kind", "openai-compatible"),
        "backend 'openai' already exists",
    )
    result = run(backends, "enable", "ghost")
    assert result.exit_code == 2 and result.stderr.startswith("Error: unknown backend 'ghost'")
    result = run(backends, "add", "x", "--kind", "local", "--key-env", "sk-live-123")
    assert result.exit_code == 2 and "never the key itself" in result.stderr
    assert "sk-live-123" not in result.output  # a pasted key is not echoed back


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dir'}/r.db"
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "r.db").mkdir()  # a directory where the database file should be
    result = CliRunner(env={"DATABASE_URL": url}).invoke(models, ["list"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: database error")
    assert len(result.stderr.strip().splitlines()) == 1


def test_set_policy_and_fallbacks(run: Invoke) -> None:
    result = run(
        models, "set", "local", "--policy", "least-loaded", "--fallback", "gpt-4o-mini",
        "--fallback", "claude-haiku-4-5-20251001", "--fallback", "gpt-4o-mini",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "model smollm2-135m: policy least-loaded, fallbacks gpt-4o-mini, claude-haiku-4-5\n"
    )
    row = run(models, "list").stdout.splitlines()[1].split()
    assert row[-3:] == ["least-loaded", "gpt-4o-mini,claude-haiku-4-5", "-"]
    result = run(models, "set", "smollm2-135m", "--no-fallbacks")
    assert result.stdout == "model smollm2-135m: policy least-loaded, fallbacks none\n"
    (data,) = json.loads(run(models, "list", "--json").stdout)
    assert (data["policy"], data["fallbacks"]) == ("least-loaded", [])


def test_set_errors_exit_2(run: Invoke) -> None:
    assert_usage_error(
        run(models, "set", "gpt-4o", "--fallback", "ghost"), "unknown fallback model 'ghost'"
    )
    assert_usage_error(
        run(models, "set", "gpt-4o", "--fallback", "gpt-4o"),
        "model 'gpt-4o' cannot fall back to itself ('gpt-4o')",
    )
    assert_usage_error(
        run(models, "set", "gpt-4o", "--policy", "fastest"),
        "unknown policy 'fastest'; valid policies: priority, least-loaded, latency, weighted",
    )
    assert_usage_error(run(models, "set", "ghost", "--policy", "latency"), "unknown model 'ghost'")
    assert_usage_error(
        run(models, "set", "gpt-4o", "--fallback", "grok-4", "--no-fallbacks"),
        "--fallback and --no-fallbacks exclude each other",
    )
    assert_usage_error(
        run(models, "set", "gpt-4o"), "nothing to set: give --policy, --fallback or --no-fallbacks"
    )


def test_deploy_list_undeploy(run: Invoke) -> None:
    result = run(
        models, "deploy", "smollm2", "--backend", "llm-d", "--upstream", "HF/SmolLM2-135M",
        "--priority", "2", "--weight", "0.5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "deployed smollm2-135m on llm-d (upstream HF/SmolLM2-135M, priority 2, weight 0.5)\n"
        "note: backend llm-d is disabled; this deployment is unused until enabled\n"
    )
    result = run(models, "deploy", "smollm2-135m", "--backend", "openai", "--priority", "0")
    assert result.stdout.startswith(
        "deployed smollm2-135m on openai (upstream smollm2-135m, priority 0, weight 1)\n"
    )
    row = run(models, "list").stdout.splitlines()[1].split()
    assert row[-1] == "openai[p0,off],llm-d[p2,w0.5,HF/SmolLM2-135M,off]"
    (data,) = json.loads(run(models, "list", "--json").stdout)
    assert [(d["backend"], d["priority"], d["weight"]) for d in data["deployments"]] == [
        ("local", 0, 1.0), ("openai", 0, 1.0), ("llm-d", 2, 0.5),
    ]  # fmt: skip
    assert data["deployments"][1]["api_key_env"] == "OPENAI_API_KEY"

    result = run(models, "undeploy", "smollm2", "--backend", "openai")
    assert (result.exit_code, result.stdout) == (0, "undeployed smollm2-135m from openai\n")
    (data,) = json.loads(run(models, "list", "--json").stdout)
    assert [d["backend"] for d in data["deployments"]] == ["local", "llm-d"]


def test_deploy_errors_exit_2(run: Invoke) -> None:
    run(models, "deploy", "gpt-4o", "--backend", "local")
    result = run(models, "deploy", "gpt-4o", "--backend", "nope")
    assert result.exit_code == 2 and result.stderr.startswith("Error: unknown backend 'nope'")
    assert len(result.stderr.strip().splitlines()) == 1
    assert_usage_error(
        run(models, "deploy", "gpt-4o", "--backend", "local"),
        "model 'gpt-4o' already has a deployment on backend 'local'",
    )
    assert_usage_error(
        run(models, "deploy", "gpt-4o", "--backend", "openai"),
        "model 'gpt-4o' is already served by backend 'openai' (its primary)",
    )
    assert_usage_error(
        run(models, "deploy", "gpt-4o", "--backend", "grok", "--weight", "0"),
        "weight must be a finite number > 0, got 0.0",
    )
    assert_usage_error(
        run(models, "deploy", "gpt-4o", "--backend", "grok", "--priority", "-3"),
        "priority must be an integer >= 0, got -3",
    )
    assert_usage_error(
        run(models, "undeploy", "gpt-4o", "--backend", "openai"),
        "backend 'openai' is the primary deployment of model 'gpt-4o' and cannot be undeployed;"
        " remove the model instead",
    )
    assert_usage_error(
        run(models, "undeploy", "gpt-4o", "--backend", "grok"),
        "model 'gpt-4o' has no deployment on backend 'grok' (primary: openai; others: local)",
    )


def test_remove_notes_dropped_fallbacks(run: Invoke) -> None:
    run(models, "add", "tmp", "--backend", "local")
    run(models, "deploy", "tmp", "--backend", "llm-d")
    run(models, "set", "smollm2-135m", "--fallback", "tmp")
    result = run(models, "remove", "tmp")
    assert result.stdout == (
        "removed model tmp\nnote: dropped tmp from the fallbacks of smollm2-135m\n"
    )
    (data,) = json.loads(run(models, "list", "--json").stdout)
    assert data["fallbacks"] == []
