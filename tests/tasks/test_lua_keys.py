"""The Lua scripts build some key names from the prefix they are passed (a script cannot
call tasks/keys.py); every name they build must be one tasks/keys.py builds too."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from tasks import keys

HOLE = "{}"

#: Every key name tasks/keys.py builds from variable parts, with each part a hole.
KEYS_TEMPLATES = {
    keys.job_key(HOLE),
    keys.events_key(HOLE),
    keys.worker_key(HOLE),
    keys.worker_jobs_key(HOLE),
    keys.queue_workers_key(HOLE),
    keys.queued_key(HOLE),
    keys.model_workers_key(HOLE, HOLE),
    keys.circuit_key(HOLE),
    keys.probe_key(HOLE),
    keys.outcomes_key(HOLE),
    keys.tenant_queued_key(HOLE, HOLE),
    keys.ring_key(HOLE),
    keys.held_key(HOLE, HOLE),
    keys.tenant_key(HOLE),
    keys.running_key(HOLE),
}
PREFIX_NAMES = ("prefix",)  # the name release.lua's functions take the prefix by

# `ARGV[n] .. ':literal' .. var .. ...` or `name .. ':literal' ...` where name is a local
# holding such a chain; a chain ends at the first token that is neither.
CHAIN = re.compile(r"((?:ARGV\[\d+\]|\w+)(?:\s*\.\.\s*(?:'[^']*'|\w+))+)")
LOCAL = re.compile(r"local\s+(\w+)\s*=\s*" + CHAIN.pattern)


def scripts() -> dict[str, str]:
    folder = resources.files("tasks").joinpath("lua")
    return {p.name: p.read_text() for p in folder.iterdir() if p.name.endswith(".lua")}


def templates(text: str) -> set[str]:
    """The key names `text` builds from a prefix argument, variable parts as holes."""
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    names = {m.group(1): m.group(2) for m in LOCAL.finditer(code)}
    found = set()
    for match in CHAIN.finditer(code):
        parts = [p.strip() for p in match.group(1).split("..")]
        while parts[0] in names:  # a local holding a chain: expand it
            parts = [p.strip() for p in names[parts[0]].split("..")] + parts[1:]
        from_prefix = parts[0].startswith("ARGV[") or parts[0] in PREFIX_NAMES
        if not from_prefix or not parts[1].startswith("':"):
            continue  # not a key built from the prefix (a timestamp, a job id + digest)
        built = [keys.PREFIX] + [p[1:-1] if p.startswith("'") else HOLE for p in parts[1:]]
        found.add("".join(built))
    return found


@pytest.mark.parametrize("name", sorted(scripts()))
def test_every_key_a_script_builds_is_one_keys_builds(name: str) -> None:
    assert templates(scripts()[name]) <= KEYS_TEMPLATES


def test_the_scripts_do_build_keys() -> None:
    """The pattern finds what it should, so the test above can fail."""
    built = set().union(*(templates(text) for text in scripts().values()))
    assert {keys.queued_key(HOLE), keys.job_key(HOLE), keys.worker_jobs_key(HOLE)} <= built
    assert templates("local h = ARGV[1] .. ':jobs:' .. j") == {"router:jobs:{}"}
