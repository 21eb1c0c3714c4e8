"""The kinds table (core/kinds.py) against what acts on it: the factories, the registry,
providers.json and the seed."""

from __future__ import annotations

import inspect
import json
from importlib import import_module, resources

import pytest

from core.kinds import KINDS, announces, discovers, kind_info
from registry.models import KINDS as REGISTRY_KINDS
from tasks.keys import KNOWN_QUEUES, LOCAL_QUEUE, PROVIDER_QUEUES
from tasks.pools import pool_for_queues
from workers.base import create_backend
from workers.errors import RouterError
from workers.providers import kind_table, provider_table


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_names_a_backend_class_with_from_env(kind: str) -> None:
    module, name = KINDS[kind].factory.split(":")
    cls = getattr(import_module(module), name)
    assert list(inspect.signature(cls.from_env).parameters)[:2] == ["env", "concurrency"]
    assert KINDS[kind].pool in ("threads", "gevent")


def test_an_unknown_kind_has_no_backend() -> None:
    assert kind_info("nope") is None and not announces("nope") and not discovers("nope")
    with pytest.raises(RouterError, match="no backend for kind `nope`"):
        create_backend("nope", {})


def test_the_registry_accepts_exactly_the_table_kinds() -> None:
    assert set(REGISTRY_KINDS) == set(KINDS)
    seed = json.loads(resources.files("registry").joinpath("seed.json").read_text())
    assert {b["kind"] for b in seed["backends"]} <= set(KINDS)


def test_providers_json_speaks_of_table_kinds_only() -> None:
    assert set(kind_table()) <= set(KINDS)
    assert {spec["kind"] for spec in provider_table().values()} <= set(KINDS)


def test_queues_come_from_providers_json() -> None:
    assert set(provider_table()) == PROVIDER_QUEUES
    assert PROVIDER_QUEUES | {LOCAL_QUEUE} == KNOWN_QUEUES
    for queue, spec in provider_table().items():
        assert pool_for_queues([queue]) == KINDS[spec["kind"]].pool
    assert pool_for_queues([LOCAL_QUEUE]) == KINDS["local"].pool
    assert pool_for_queues([LOCAL_QUEUE, "openai"]) == "threads"
