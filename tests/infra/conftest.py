"""Shared helpers of the deployment-file tests: paths, and the chart rendered by Helm's engine.

The chart is rendered by `helm-python-sdk`, which binds Helm's own Go SDK (no `helm` binary
exists on these machines); tests that need it skip, saying so, where it is not installed.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "infra" / "helm" / "inference-router"
LLMD = ROOT / "infra" / "llm-d"
RELEASE, NAMESPACE = "demo", "llm"
FULLNAME = f"{RELEASE}-inference-router"

#: Backend (= queue) -> the variable holding its key, as registry/seed.json names them.
KEY_VARS = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "google": "GEMINI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "grok": "XAI_API_KEY",
    "venice": "VENICE_API_KEY",
    "llm-d": "LLMD_API_KEY",
}

Manifest = dict[str, Any]


def load_yaml(path: Path) -> Any:
    """One YAML document from a file in the repository."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `base`, maps recursively (like Helm's -f layering)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def helm_module() -> Any:
    """helm_python (Helm's Go SDK through ctypes), or skip the test with the reason."""
    return pytest.importorskip(
        "helm_python",
        reason="helm-python-sdk (Helm's engine as a wheel) is not installed: "
        "chart rendering not checked; pip install helm-python-sdk",
    )


def render_files(
    values: Mapping[str, Any] | None = None, chart_dir: Path = CHART
) -> dict[str, str]:
    """Template path -> text, NOTES.txt included, of the chart rendered with `values` over
    its defaults, after checking `values` against values.schema.json as `helm install`
    would. Offline: `lookup` finds nothing, as on a first install."""
    helm = helm_module()
    with helm.Chart.load(str(chart_dir)) as chart:
        chart.validate_schema(dict(values or {}))
        files: dict[str, str] = chart.render(dict(values or {}), name=RELEASE, namespace=NAMESPACE)
    return files


def render_chart(
    values: Mapping[str, Any] | None = None, chart_dir: Path = CHART
) -> list[Manifest]:
    """Every Kubernetes object the chart renders with `values` over its defaults (see
    render_files)."""
    files = render_files(values, chart_dir)
    docs: list[Manifest] = []
    for path, text in sorted(files.items()):
        if path.endswith((".yaml", ".yml")):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[Manifest], kind: str) -> dict[str, Manifest]:
    """Objects of one kind by name."""
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container_env(obj: Manifest, container: str | None = None) -> dict[str, Any]:
    """name -> env entry of the first (or the named) container of a workload."""
    spec = obj["spec"]["template"]["spec"]
    for c in spec["containers"]:
        if container is None or c["name"] == container:
            return {e["name"]: e for e in c.get("env", [])}
    raise KeyError(container)


def procfile_api_argv() -> list[str]:
    """The Procfile's gunicorn command line, bound to 0.0.0.0:8000 as in a container."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    api = dict(line.split(": ", 1) for line in lines if line.strip())["api"]
    gunicorn = api[api.index("gunicorn ") :]
    bind = "${ROUTER_HOST:-127.0.0.1}:${ROUTER_PORT:-8000}"
    return shlex.split(gunicorn.replace(bind, "0.0.0.0:8000"))


STUB_GUNICORN = """#!/bin/sh
printf 'DIR=%s\\n' "$PROMETHEUS_MULTIPROC_DIR"
if [ -d "$PROMETHEUS_MULTIPROC_DIR" ]; then
  printf 'ENTRIES=%s\\n' "$(ls -A "$PROMETHEUS_MULTIPROC_DIR" | wc -l | tr -d ' ')"
fi
for a in "$@"; do printf 'ARG=%s\\n' "$a"; done
"""


def check_api_start_script(script: str, tmp_path: Path) -> None:
    """Run a container's API start script (`sh -c`) with a stand-in gunicorn on PATH and
    check it starts gunicorn exactly as the Procfile does, with PROMETHEUS_MULTIPROC_DIR
    set and emptied first when the Procfile sets it."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "stale.db").write_text("from the last run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "gunicorn"
    stub.write_text(STUB_GUNICORN)
    stub.chmod(0o755)
    assert "/tmp/metrics" in script
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"}
    done = subprocess.run(
        ["sh", "-c", script.replace("/tmp/metrics", str(metrics))],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    out = done.stdout.splitlines()
    args = [line[4:] for line in out if line.startswith("ARG=")]
    assert ["gunicorn", *args] == procfile_api_argv()
    if "PROMETHEUS_MULTIPROC_DIR" in (ROOT / "Procfile").read_text():
        assert f"DIR={metrics}" in out and "ENTRIES=0" in out, out


#: Value overlays the chart is rendered and validated with (besides its defaults).
SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    "defaults": lambda: {},
    "llm-d overlay": lambda: load_yaml(LLMD / "router-values.yaml"),
    "everything on": lambda: deep_merge(
        load_yaml(LLMD / "router-values.yaml"),
        {
            "providers": {
                "enabled": ["openai", "anthropic"],
                "keys": {"OPENAI_API_KEY": "sk-test-openai", "ANTHROPIC_API_KEY": "sk-ant-test"},
            },
            "api": {
                "adminKey": {"value": "admin-test-key-0123"},
                "persistence": {"enabled": True},
            },
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "tls": [{"hosts": ["router.example.com"], "secretName": "router-tls"}],
            },
            "registry": {"commands": ["models add my-llama --backend llm-d --upstream x"]},
            "workers": {"local": {"enabled": True, "concurrency": 4}},
            "flower": {"existingSecret": "flower-auth"},
        },
    ),
    "external redis": lambda: {
        "redis": {"bundled": False, "external": {"url": "redis://:pw@redis.example:6380/2"}},
        "keda": {
            "redis": {
                "address": "redis.example:6380",
                "databaseIndex": 2,
                "passwordSecret": {"name": "redis-auth", "key": "password"},
            }
        },
        "providers": {"existingSecret": "provider-keys", "enabled": ["google"]},
        "api": {"adminKey": {"existingSecret": "router-admin", "secretKey": "admin-key"}},
    },
    "keda off": lambda: {"keda": {"enabled": False}, "api": {"auth": "auto"}},
}
