"""Every third-party module the code imports is a dependency pyproject.toml declares.

`make run` installs the runtime dependencies only; `make test` adds the `dev` extra to
the same venv, so an import that only the dev extra (or some package's own dependency)
happens to install passes the suite and breaks a fresh `make run`. This test reads the
imports (`ast`, also those inside functions), maps each to the distribution that provides
it (`importlib.metadata.packages_distributions()`) and checks the declaration: api/,
tasks/, workers/ and registry/ against `[project].dependencies`; tests/ and bench/
against those plus the `dev` extra. An import inside `try: ... except ImportError` is
optional and not checked.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DIRS = ("api", "core", "tasks", "workers", "registry")
DEV_DIRS = ("tests", "bench")
LOCAL = {*RUNTIME_DIRS, *DEV_DIRS}
SCRIPT_DIRS = (ROOT / "bench",)  # run as `python bench/x.py`: their siblings are importable
OPTIONAL_GUARDS = {"ImportError", "ModuleNotFoundError"}


@dataclass(frozen=True)
class Import:
    module: str  # dotted, as written
    path: Path
    line: int
    name: str = ""  # `from module import name`: maybe a submodule, which narrows the owner

    @property
    def target(self) -> str:
        return f"{self.module}.{self.name}" if self.name else self.module


class _Imports(ast.NodeVisitor):
    """Absolute imports anywhere in a module, minus those guarded by `except ImportError`."""

    def __init__(self, path: Path) -> None:
        self.path, self.found = path, list[Import]()

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [Import(a.name, self.path, node.lineno) for a in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.found += [Import(node.module, self.path, node.lineno, a.name) for a in node.names]

    def visit_Try(self, node: ast.Try) -> None:
        if not any(_catches_import_error(h.type) for h in node.handlers):
            self.generic_visit(node)
            return
        for child in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(child)  # the guarded body is skipped: the code runs without it


def _catches_import_error(kind: ast.expr | None) -> bool:
    names = kind.elts if isinstance(kind, ast.Tuple) else [kind]
    return any(isinstance(n, ast.Name) and n.id in OPTIONAL_GUARDS for n in names)


def imports_of(source: str, path: Path) -> list[Import]:
    """The absolute imports of one module's source."""
    visitor = _Imports(path)
    visitor.visit(ast.parse(source, filename=str(path)))
    return visitor.found


def third_party(found: list[Import]) -> Iterator[Import]:
    """Imports that are neither the standard library nor this project's own modules
    (a bench script's `import stack` is its sibling bench/stack.py)."""
    for imp in found:
        top = imp.module.split(".")[0]
        if top in sys.stdlib_module_names or top in LOCAL:
            continue
        sibling = imp.path.parent / top
        if imp.path.parent in SCRIPT_DIRS and (
            sibling.with_suffix(".py").exists() or (sibling / "__init__.py").exists()
        ):
            continue
        yield imp


def scan(*dirs: str) -> list[Import]:
    """The third-party imports of every module under `dirs` (relative to the repository)."""
    found: list[Import] = []
    for d in dirs:
        for path in sorted((ROOT / d).rglob("*.py")):
            found += third_party(imports_of(path.read_text(encoding="utf-8"), path))
    return found


def normalize(name: str) -> str:
    """PEP 503 name: `PyYAML` and `pyyaml`, `flask_sock` and `flask-sock` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    assert match, f"unreadable requirement {spec!r} in pyproject.toml"
    return normalize(match.group(1))


def declared() -> tuple[set[str], set[str]]:
    """(runtime, dev) distribution names pyproject.toml declares."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = {requirement_name(s) for s in project["dependencies"]}
    dev = {requirement_name(s) for s in project["optional-dependencies"]["dev"]}
    return runtime, dev


@cache
def _providers() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()


@cache
def _files(dist: str) -> tuple[str, ...]:
    return tuple(str(f) for f in metadata.distribution(dist).files or ())


def distributions(module: str) -> set[str]:
    """The installed distributions that provide `module`. A namespace package (`google`)
    has several: the one whose files hold the submodule (`google/genai/`) is meant."""
    parts = module.split(".")
    found = set(_providers().get(parts[0], ()))
    for depth in range(len(parts), 1, -1) if len(found) > 1 else ():
        stem = "/".join(parts[:depth])
        owners = {
            d for d in found if any(f.startswith((stem + "/", stem + ".")) for f in _files(d))
        }
        if owners:
            return {normalize(d) for d in owners}
    return {normalize(d) for d in found}


def undeclared(found: list[Import], allowed: set[str]) -> list[str]:
    """One line per import statement whose distribution is not in `allowed` (or that no
    installed distribution provides)."""
    problems: dict[str, None] = {}
    for imp in found:
        dists = distributions(imp.target)
        if dists & allowed:
            continue
        owner = ", ".join(sorted(dists)) or "no installed distribution"
        where = f"{imp.path.relative_to(ROOT)}:{imp.line}"
        problems[f"{where}: {imp.module} is from {owner}"] = None
    return list(problems)


def test_runtime_code_imports_only_runtime_dependencies() -> None:
    runtime, _ = declared()
    problems = undeclared(scan(*RUNTIME_DIRS), runtime)
    assert not problems, "declare these in [project].dependencies:\n" + "\n".join(problems)


def test_tests_and_bench_import_only_declared_dependencies() -> None:
    runtime, dev = declared()
    problems = undeclared(scan(*DEV_DIRS), runtime | dev)
    assert not problems, "declare these in the dev extra:\n" + "\n".join(problems)


def test_the_scan_sees_imports_in_functions_and_skips_guarded_ones() -> None:
    source = (
        "import os\nimport httpx\nfrom api import create_app\nfrom . import sibling\n"
        "def f():\n    from google import genai\n    import torch.nn\n"
        "try:\n    import llama_cpp\nexcept ImportError:\n    llama_cpp = None\n"
        "try:\n    import yaml\nexcept KeyError:\n    pass\n"
    )
    path = ROOT / "workers" / "example.py"
    found = [i.target for i in third_party(imports_of(source, path))]
    assert found == ["httpx", "google.genai", "torch.nn", "yaml"]


def test_an_undeclared_import_is_reported_with_its_distribution() -> None:
    path = ROOT / "workers" / "example.py"
    found = imports_of("import httpx\nfrom google import genai\nimport yaml\n", path)
    problems = undeclared(list(third_party(found)), {"google-genai", "httpx2"})
    assert problems == [
        "workers/example.py:1: httpx is from httpx",
        "workers/example.py:3: yaml is from pyyaml",
    ]
    assert distributions("google.genai") == {"google-genai"}  # not google-auth's `google`
