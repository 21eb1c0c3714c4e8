"""core/settings.py: one boolean parser, values read by type with errors that name the
variable, defaults < environment < create_app's mapping, the API's config and the
workers' settings alike, and the configuration table of docs/operations.md in step with
the module."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.settings import DEFAULTS, Settings, SettingsError, parse_bool, spec, specs

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"

#: Variables of the configuration table that are not settings, and who reads them.
READ_ELSEWHERE = {
    "ROUTER_PORT": "the Makefile and the Procfile: the port gunicorn binds",
    "ROUTER_KEY_ENV_ALLOWLIST": "workers/providers.py, with the provider keys it allows",
    "PROMETHEUS_MULTIPROC_DIR": "prometheus_client, in the API's gunicorn workers",
}
#: Table variables with these prefixes must be settings (or READ_ELSEWHERE); the others
#: are per-provider (`<PREFIX>_API_KEY`, `LLMD_BASE_URL`: workers/providers.json).
OURS = ("ROUTER_", "LOCAL_", "FLOWER_")


# -- reading values -------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["1", "true", "yes", "on", "TRUE", "On", " yes "])
def test_true_words(word: str) -> None:
    assert parse_bool(word, "ROUTER_X") is True


@pytest.mark.parametrize("word", ["0", "false", "no", "off", "", "OFF", "False"])
def test_false_words(word: str) -> None:
    assert parse_bool(word, "ROUTER_X") is False


def test_every_switch_reads_the_same_words() -> None:
    switches = [s for s in specs() if s.kind is bool]
    assert {s.variable for s in switches} >= {
        "ROUTER_TASK_EVENTS",
        "ROUTER_TASK_LOG",
        "ROUTER_LOG_JSON",
        "ROUTER_REQUEST_LOG",
    }
    on = Settings.load({s.variable: "on" for s in switches})
    off = Settings.load({s.variable: "Off" for s in switches})
    assert all(getattr(on, s.field) is True for s in switches)
    assert all(getattr(off, s.field) is False for s in switches)
    assert Settings.load({"ROUTER_TASK_EVENTS": "on"}).task_events is True


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("ROUTER_TASK_EVENTS", "maybe", "ROUTER_TASK_EVENTS must be one of 1, true"),
        ("ROUTER_JOB_TTL", "1h", "ROUTER_JOB_TTL must be an integer; got '1h'"),
        ("ROUTER_JOB_TTL", "3600.5", "ROUTER_JOB_TTL must be an integer"),
        ("ROUTER_WORKER_WAIT", "soon", "ROUTER_WORKER_WAIT must be a number; got 'soon'"),
        ("ROUTER_WORKER_CONCURRENCY", "many", "ROUTER_WORKER_CONCURRENCY must be an integer"),
        ("LOCAL_TEMPERATURE", "warm", "LOCAL_TEMPERATURE must be a number"),
        ("FLOWER_PORT", "http", "FLOWER_PORT must be an integer"),
    ],
)
def test_a_bad_value_is_an_error_naming_its_variable(variable: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(says)):
        Settings.load({variable: value})


def test_numbers_are_read_by_type() -> None:
    s = Settings.load({"ROUTER_JOB_TTL": "60", "ROUTER_WORKER_WAIT": "5", "FLOWER_PORT": " 80 "})
    assert (s.job_ttl, s.worker_wait, s.flower_port) == (60, 5.0, 80)
    assert isinstance(s.worker_wait, float) and isinstance(s.job_ttl, int)
    assert Settings.load({"ROUTER_WORKER_CONCURRENCY": "4"}).worker_concurrency == 4


def test_text_is_taken_as_written_and_empty_is_unset() -> None:
    for raw in ("0", "false", "null", '"quoted"', "1e400"):
        assert Settings.load({"ROUTER_ADMIN_KEY": raw}).admin_key == raw
    empty = {s.variable: "" for s in specs() if s.kind is not bool}
    assert Settings.load(empty) == Settings()  # compose passes VAR= for a blank .env entry
    assert Settings.load({"ROUTER_HOST": ""}).host == "127.0.0.1"
    assert Settings.load({"ROUTER_ADMIN_KEY": ""}).admin_key is None


def test_defaults_come_first_then_the_environment_then_the_mapping() -> None:
    env = {"ROUTER_JOB_TTL": "60", "ROUTER_WORKER_WAIT": "5", "REDIS_URL": "redis://r:1/0"}
    assert Settings.load({}) == Settings() == DEFAULTS
    s = Settings.load(env, {"WORKER_WAIT": 0.5, "TESTING": True})
    assert (s.job_ttl, s.worker_wait, s.redis_url) == (60, 0.5, "redis://r:1/0")
    assert s.request_timeout == DEFAULTS.request_timeout == 600.0


def test_mapping_values_are_checked_by_type() -> None:
    s = Settings.load({}, {"LOG_JSON": 1, "WORKER_WAIT": 2, "BREAKER_FAILURES": 2})
    assert (s.log_json, s.worker_wait, s.breaker_failures) == (True, 2.0, 2)
    assert Settings.load({}, {"JOB_TTL": "90", "REQUEST_LOG": "off"}).job_ttl == 90
    assert Settings.load({}, {"ALLOWED_HOSTS": ["a.example", "b.example"]}).allowed_hosts == (
        "a.example",
        "b.example",
    )
    assert Settings.load({"ROUTER_JOB_TTL": "60"}, {"JOB_TTL": None}).job_ttl == 3600
    for bad in ({"JOB_TTL": 1.5}, {"JOB_TTL": True}, {"ADMIN_KEY": 123}, {"LOG_JSON": 2}):
        with pytest.raises(SettingsError, match=f"ROUTER_{next(iter(bad))}"):
            Settings.load({}, bad)


def test_names_and_variables() -> None:
    assert spec("job_ttl").variable == "ROUTER_JOB_TTL" and spec("job_ttl").name == "JOB_TTL"
    assert spec("redis_url").variable == "REDIS_URL"
    assert spec("local_max_batch").variable == "LOCAL_MAX_BATCH"
    assert spec("flower_port").variable == "FLOWER_PORT"
    assert spec("model_cache").variable == "ROUTER_MODEL_CACHE"
    variables = [s.variable for s in specs()]
    assert len(variables) == len(set(variables))
    assert all(s.doc and s.kind in (bool, int, float, str) for s in specs())
    config = DEFAULTS.as_config()
    assert config["JOB_TTL"] == 3600 and Settings.from_config(config) == DEFAULTS
    assert DEFAULTS.heartbeat_ttl == 3 * DEFAULTS.heartbeat_interval


# -- the API and the workers agree ------------------------------------------------------------


def test_the_api_config_is_the_workers_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api import create_app
    from tasks.health import BreakerPolicy
    from workers.upstream import RetryPolicy

    env = {
        "ROUTER_JOB_TTL": "120",
        "ROUTER_TASK_EVENTS": "on",
        "ROUTER_LOG_JSON": "no",
        "ROUTER_BREAKER_COOLDOWN": "2.5",
        "ROUTER_ADMIN_KEY": "0123456789abcdef",
        "LOCAL_TEMPERATURE": "0.7",
    }
    for s in specs():
        monkeypatch.delenv(s.variable, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = {
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "DATABASE_URL": f"sqlite:///{tmp_path}/r.db",
        "BREAKER_FAILURES": 2,
        "TESTING": True,
    }
    app = create_app(config)  # the environment, as a worker started with it reads it
    worker = Settings.load(os.environ, config)
    for s in specs():
        assert app.config[s.name] == getattr(worker, s.field), s.name
    assert app.config["TESTING"] is True and app.config["JOB_TTL"] == 120
    assert worker.task_events is True and worker.local_temperature == 0.7
    policy = app.extensions["services"].health.policy
    assert policy == BreakerPolicy.from_settings(worker)
    assert (policy.failures, policy.cooldown) == (2, 2.5)
    assert RetryPolicy.from_settings(Settings()) == RetryPolicy()


def test_workers_read_task_events_on() -> None:
    """ROUTER_TASK_EVENTS=on reaches Celery (it used to take only 1, true, yes)."""
    code = "import tasks.celeryconfig as c; print(c.worker_send_task_events, c.task_time_limit)"
    env = {"ROUTER_TASK_EVENTS": "on", "ROUTER_REQUEST_TIMEOUT": "100", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "160"]


def test_no_module_reads_a_setting_from_the_environment_itself() -> None:
    """Settings are read through core.settings only: a `.get("ROUTER_...")` elsewhere
    would have defaults and parsing of its own again."""
    names = "|".join(re.escape(s.variable) for s in specs())
    direct = re.compile(
        rf"""(?:\benv(?:iron)?(?:\.get\(|\.setdefault\(|\[)|getenv\()\s*["']({names})["']"""
    )
    found = []
    for package in ("api", "core", "registry", "tasks", "workers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if direct.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []


# -- docs/operations.md ---------------------------------------------------------------------


def _configuration_rows() -> dict[str, str]:
    """{variable: default cell} of the configuration table. A row of several variables
    (`ROUTER_BREAKER_FAILURES`, `_ERROR_RATE`: the first one's two-word prefix) pairs them
    with its comma-separated defaults, or gives all of them its one default."""
    text = OPERATIONS.read_text()
    section = text[text.index("## Configuration") :]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| `") or len(cells) < 3:
            continue
        names = re.findall(r"`([A-Z_][A-Z0-9_]*)`", cells[0])
        prefix = "_".join(names[0].split("_")[:2])
        names = [prefix + n if n.startswith("_") else n for n in names]
        defaults = [cells[1]] if len(names) == 1 else [d.strip() for d in cells[1].split(", ")]
        if len(defaults) == 1:
            defaults *= len(names)  # `unset` for every provider key
        assert len(defaults) == len(names), f"one default per variable, or one for all: {line}"
        rows.update(zip(names, defaults, strict=True))
    return rows


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{int(value)}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def test_every_setting_is_documented_with_its_default() -> None:
    rows = _configuration_rows()
    for s in specs():
        assert s.variable in rows, f"docs/operations.md has no row for {s.variable}"
        expected = s.shown or _shown(s.default)
        assert rows[s.variable] == expected, f"{s.variable}: docs say {rows[s.variable]}"


def test_every_documented_variable_is_a_setting() -> None:
    settings = {s.variable for s in specs()}
    for variable in _configuration_rows():
        if variable.startswith(OURS):
            assert variable in settings or variable in READ_ELSEWHERE, variable
    assert set(READ_ELSEWHERE) <= set(_configuration_rows())
    assert not set(READ_ELSEWHERE) & settings
