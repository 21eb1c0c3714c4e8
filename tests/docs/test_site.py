"""The MkDocs site: it builds with `--strict` (no warning, no broken link or anchor, no
Google Fonts), the API reference documents exactly the routes the app has, and the figures
and settings it copies from the README still match the README."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [
    "index",
    "quickstart",
    "architecture",
    "api",
    "providers",
    "resilience",
    "mac-worker",
    "deploy",
    "operations",
    "benchmarks",
]
# a MkDocs log line at WARNING or above: "WARNING -  ..." (Material's own banner is not one)
LOG_PROBLEM = re.compile(r"^\s*(?:\x1b\[[0-9;]*m)?(WARNING|ERROR)\b", re.M)


def _mkdocs_missing() -> str | None:
    for module, package in (("mkdocs", "mkdocs"), ("material", "mkdocs-material")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install mkdocs-material)"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built once with `mkdocs build --strict` into a temporary directory."""
    missing = _mkdocs_missing()
    if missing:
        pytest.skip(missing)
    if not (DOCS / "deploy.md").exists():
        pytest.skip("docs/deploy.md does not exist yet; the nav links to it")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life banner
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean"]
    cmd += ["--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert not LOG_PROBLEM.search(log), log
    return out


def test_every_page_is_built(site: Path) -> None:
    for page in PAGES:
        built = site / ("index.html" if page == "index" else f"{page}/index.html")
        assert built.is_file(), f"{page}.md was not built"


def test_mermaid_diagrams_are_left_for_the_browser(site: Path) -> None:
    html = (site / "architecture" / "index.html").read_text()
    assert html.count('class="mermaid"') >= 2
    assert "flowchart" in html and "sequenceDiagram" in html


def test_no_page_asks_google_fonts(site: Path) -> None:
    for html in site.rglob("*.html"):
        assert "fonts.googleapis.com" not in html.read_text(), html


def _app_routes(tmp_path: Path) -> set[str]:
    """`METHOD /path` of every route of the real app, WebSockets as `WS`; `{}` for params."""
    from api import create_app

    app = create_app(
        {"REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_URL": f"sqlite:///{tmp_path}/r.db"}
    )
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<[^>]+>", "{}", rule.rule)
        methods = ["WS"] if rule.endpoint.startswith("ws.") else sorted(rule.methods or ())
        routes |= {f"{m} {path}" for m in methods if m not in ("HEAD", "OPTIONS")}
    return routes


def _documented_routes() -> set[str]:
    """`METHOD /path` of every endpoint heading (### `GET /v1/models`) in api.md."""
    text = (DOCS / "api.md").read_text()
    found = re.findall(r"^#{2,4} `(GET|POST|PUT|PATCH|DELETE|WS) (/[^`\s]*)`", text, re.M)
    return {f"{m} {re.sub(r'{[^}]*}', '{}', p)}" for m, p in found}


def test_api_reference_documents_exactly_the_routes_that_exist(tmp_path: Path) -> None:
    app, docs = _app_routes(tmp_path), _documented_routes()
    assert app - docs == set(), "routes missing from docs/api.md"
    assert docs - app == set(), "docs/api.md documents routes the app does not have"


def _readme_section(title: str) -> str:
    text = README.read_text()
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert found, f"README.md has no section {title!r}"
    return found.group(1).strip("\n")


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_benchmark_sections_are_the_readmes_word_for_word() -> None:
    page = (DOCS / "benchmarks.md").read_text()
    for title in ("What the router costs", "Local worker throughput"):
        assert _readme_section(title) in page, f"README section {title!r} changed: copy it"
    chaos = _readme_section("Resilience")
    chaos = chaos[chaos.index("`bench/chaos.py --jobs 200`") :]
    rows = _table_rows(chaos)
    chaos = chaos[: chaos.index(rows[-1]) + len(rows[-1])]  # the sentence and its table
    assert chaos in page, "README's chaos figures changed: copy them"


def test_every_benchmark_figure_and_command_is_in_the_readme() -> None:
    page = (DOCS / "benchmarks.md").read_text()
    readme = README.read_text()
    readme_lines = set(readme.splitlines())
    for row in _table_rows(page):
        assert row in readme_lines, f"not a README figure: {row}"
    commands = re.findall(r"^\.venv/bin/python (bench/\S+[^#\n]*)", page, re.M)
    assert len(commands) >= 4
    for command in commands:
        assert command.strip() in readme, f"not a README command: {command}"


def test_configuration_table_matches_the_readme() -> None:
    ops = set(_table_rows((DOCS / "operations.md").read_text()))
    readme = _table_rows(_readme_section("Configuration"))
    assert len(readme) > 10
    for row in readme:
        row = row.replace("](docs/", "](")  # README links docs/x.md; the site links x.md
        assert row in ops, f"operations.md lacks README's configuration row: {row}"
