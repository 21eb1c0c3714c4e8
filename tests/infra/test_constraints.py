"""constraints.txt, the lock every install uses, and the dependency floors of pyproject.toml.

Every dependency of the project and its dev extra is pinned to one version, which meets
pyproject.toml; what an installed dependency needs in turn is pinned too; torch's pin is the
Makefile's; the Makefile's installs and the Dockerfile's go through it; the floors stay
above the releases that fixed published vulnerabilities, and the SDKs below their next
major version.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib import metadata

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.infra.conftest import ROOT

CONSTRAINTS = ROOT / "constraints.txt"
#: Below these, a published vulnerability: pyproject.toml must not allow them.
FLOORS = {
    "torch": "2.6",
    "transformers": "4.48",
    "gunicorn": "23",
    "urllib3": "2.6",
    "werkzeug": "3.0.6",
    "jinja2": "3.1.6",
}
#: SDKs whose next major version may break the backends: capped below it.
NEXT_MAJOR = {"anthropic": "3", "google-genai": "4", "openai": "4"}


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-z0-9-]+)==([0-9][0-9A-Za-z.!]*)", line)
        assert match, f"not a normalized exact pin: {line!r}"
        assert match[1] not in found, f"pinned twice: {match[1]}"
        found[match[1]] = match[2]
    return found


def requirements() -> tuple[list[Requirement], list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(r) for r in project["dependencies"]]
    dev = [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    return runtime, dev


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pinned = pins()
    assert list(pinned) == sorted(pinned)
    runtime, dev = requirements()
    for req in [*runtime, *dev]:
        name = canonicalize_name(req.name)
        assert name in pinned, f"{name} is not in constraints.txt: run `make constraints`"
        assert req.specifier.contains(pinned[name], prereleases=True), (req, pinned[name])


def test_torch_is_the_makefiles_and_the_project_is_left_out() -> None:
    pinned = pins()
    makefile = (ROOT / "Makefile").read_text()
    torch = re.search(r"^TORCH\s*\?=\s*torch==(\S+)$", makefile, re.M)
    assert torch and pinned["torch"] == torch[1] == "2.13.0"
    model = re.search(r"^MODEL\s*\?=\s*([A-Za-z0-9._-]+)==", makefile, re.M)
    assert model and canonicalize_name(model[1]) not in pinned  # installed without its deps
    assert not {"inference-router", "pip", "wheel"} & set(pinned)


def _needs(dist: str, extras: set[str]) -> list[Requirement]:
    """What the installed `dist`, with `extras`, requires on this interpreter."""
    found = []
    for text in metadata.requires(dist) or ():
        req = Requirement(text)
        envs = [{**default_environment(), "extra": e} for e in extras or {""}]
        if req.marker is None or any(req.marker.evaluate(env) for env in envs):
            found.append(req)
    return found


def test_what_the_pinned_dependencies_need_is_pinned_too() -> None:
    """The closure over the installed distributions: a dependency pinned here whose own
    requirement is missing would be resolved afresh at install time, unpinned."""
    pinned = pins()
    runtime, dev = requirements()
    todo = [(canonicalize_name(r.name), set(r.extras)) for r in [*runtime, *dev]]
    seen: set[tuple[str, frozenset[str]]] = set()
    missing = []
    while todo:
        name, extras = todo.pop()
        if (name, frozenset(extras)) in seen:
            continue
        seen.add((name, frozenset(extras)))
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # not in this venv: nothing to read its requirements from
        # torch's CPU wheel says 2.13.0+cpu: the local label is not part of the pin
        if name in pinned and Version(installed).public != Version(pinned[name]).public:
            pytest.skip(f"this venv has {name} {installed}, not {pinned[name]}: not the lock's")
        for req in _needs(name, extras):
            child = canonicalize_name(req.name)
            if child not in pinned and child != "pip":  # the installer, in every venv
                missing.append(f"{child} (needed by {name})")
            todo.append((child, set(req.extras)))
    assert not missing, "not in constraints.txt: " + ", ".join(sorted(set(missing)))


def test_pyproject_stays_above_fixed_vulnerabilities_and_below_next_majors() -> None:
    runtime, dev = requirements()
    by_name = {canonicalize_name(r.name): r for r in [*runtime, *dev]}
    runtime_names = {canonicalize_name(r.name) for r in runtime}
    for name, floor in FLOORS.items():
        spec = by_name[name].specifier
        assert name in runtime_names
        assert spec.contains(floor), f"{name} refuses {floor}"
        below = Version(floor).release
        previous = ".".join(map(str, [*below[:-1], below[-1] - 1])) if below[-1] else None
        assert previous is None or not spec.contains(previous), f"{name} allows {previous}"
    for name, major in NEXT_MAJOR.items():
        assert not by_name[name].specifier.contains(f"{major}.0.0"), f"{name} allows {major}.x"
    assert "openai" not in runtime_names, "only tests, bench and .ci use the openai SDK"


def test_every_install_goes_through_the_constraints() -> None:
    """`make install-dev` (what make run and make test install) as make would run it, and
    the Dockerfile's install of the project."""
    plan = subprocess.run(
        ["make", "-n", "-B", "VENV=/nonexistent/venv", "install-dev"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    installs = [line for line in plan.splitlines() if " install " in line and "pip" in line]
    unconstrained = [
        line
        for line in installs
        if "-c constraints.txt" not in line
        and "--no-deps" not in line
        and "--upgrade pip" not in line
    ]
    assert len(installs) >= 4 and not unconstrained, plan
    assert any("-e .[dev]" in line.replace('"', "") for line in installs)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install \. -c constraints\.txt ", dockerfile, re.M)
    assert re.search(r"^COPY .*\bconstraints\.txt\b.* \./$", dockerfile, re.M)
