"""`core` is the bottom layer: every package may import it, and it imports none of ours."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import core

OURS = ("api", "tasks", "workers", "registry")


def test_core_imports_no_other_package_of_ours() -> None:
    modules = [f"core.{m.name}" for m in pkgutil.iter_modules(core.__path__)]
    code = (
        f"import sys, {', '.join(modules)}\n"
        f"print('\\n'.join(m for m in sys.modules if m.split('.')[0] in {OURS!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert modules and out.stdout.split() == []
