"""Deployment order by policy, fallback chains, and why a candidate is refused."""

from __future__ import annotations

import dataclasses
from collections import Counter

from api.routing import Budget, Picker, Target, chain, ordered
from registry.queries import BackendInfo, ModelRoute, Snapshot, deployment_info


def backend(name: str, enabled: bool = True) -> BackendInfo:
    return BackendInfo(name, "openai-compatible", name, None, None, enabled)


def route(model_id: str, *backends: str, **kw: object) -> ModelRoute:
    deps = tuple(deployment_info(backend(b), model_id, i, 1.0 + i) for i, b in enumerate(backends))
    first = deps[0]
    fields: dict[str, object] = dict(
        id=model_id,
        backend=first.backend,
        kind=first.kind,
        queue=first.queue,
        upstream=model_id,
        context_window=1000,
        max_tokens=100,
        input_price=0.0,
        output_price=0.0,
        aliases=(),
        base_url=None,
        api_key_env=None,
        enabled=True,
        created=0,
        deployments=deps,
    )
    fields.update(kw)
    return ModelRoute(**fields)  # type: ignore[arg-type]


class Load:
    """A LoadView stand-in: running jobs per backend, capacity 10 each, ttft per backend,
    and per queue its backlog, the wait a new job would see and start-up failures."""

    def __init__(
        self,
        running: dict[str, int],
        ttft: dict[str, float] | None = None,
        *,
        waiting: dict[str, int] | None = None,
        wait: dict[str, float] | None = None,
        failed: dict[str, str] | None = None,
    ) -> None:
        self.running, self._ttft = running, ttft or {}
        self.waiting, self.wait, self.failed = waiting or {}, wait or {}, failed or {}

    def load(self, t: Target) -> tuple[int, int]:
        return self.running.get(t.backend, 0), 10

    def depth(self, queue: str) -> int:
        return self.waiting.get(queue, 0)

    def queue_wait(self, t: Target) -> float:
        return self.wait.get(t.queue, 0.0)

    def service_time(self, backend: str) -> float:
        return 2.0

    def failure(self, queue: str) -> str | None:
        return self.failed.get(queue)

    def ttft(self, backend: str) -> float:
        return self._ttft.get(backend, 0.0)


def names(targets: list[Target]) -> list[str]:
    return [t.backend for t in targets]


def test_priority_keeps_registry_order() -> None:
    r = route("m", "a", "b", "c")
    assert names(ordered(r, Load({"a": 9}))) == ["a", "b", "c"]  # type: ignore[arg-type]


def test_least_loaded_and_latency() -> None:
    r = route("m", "a", "b", "c", policy="least-loaded")
    assert names(ordered(r, Load({"a": 9, "b": 5, "c": 1}))) == ["c", "b", "a"]  # type: ignore[arg-type]
    r = dataclasses.replace(r, policy="latency")
    load = Load({}, {"a": 300.0, "b": 100.0})  # c never measured: tried first
    assert names(ordered(r, load)) == ["c", "b", "a"]  # type: ignore[arg-type]


def test_weighted_follows_the_weights() -> None:
    r = route("m", "a", "b", policy="weighted")  # weights 1 and 2
    firsts = Counter(ordered(r, Load({}))[0].backend for _ in range(3000))  # type: ignore[arg-type]
    assert 0.25 < firsts["a"] / 3000 < 0.42


def test_disabled_deployments_are_skipped() -> None:
    deps = (deployment_info(backend("a", enabled=False), "m"), deployment_info(backend("b"), "m"))
    r = route("m", "a", deployments=deps)
    assert names(ordered(r, Load({}))) == ["b"]  # type: ignore[arg-type]


def test_fallback_chain_is_breadth_first_without_repeats() -> None:
    a = route("a", "x", fallbacks=("b", "c"))
    b = route("b", "y", fallbacks=("a", "d"))
    c = route("c", "z", enabled=False, deployments=())
    d = route("d", "w")
    snap = Snapshot([a, b, c, d], [])
    assert [r.id for r in chain(a, snap)] == ["a", "b", "d"]  # c is disabled; a not twice


class Live:
    def __init__(self, alive: set[str]) -> None:
        self.alive = alive

    def any_target(self, kind: str, queue: str, upstream: str) -> bool:
        return queue in self.alive


class Health:
    def __init__(self, verdicts: dict[str, int]) -> None:
        self.verdicts = verdicts
        self.policy = type("P", (), {"cooldown": 10.0})()

    def allow(self, backend: str) -> int:
        return self.verdicts.get(backend, 1)


def test_picker_skips_dead_and_open_deployments_and_says_why() -> None:
    a = route("a", "x", "y", fallbacks=("b",))
    b = route("b", "z")
    snap = Snapshot([a, b], [])
    picker = Picker(Live({"y", "z"}), Health({"y": 0}), Load({}), queue_limit=0)  # type: ignore[arg-type]
    cand, refusals = picker.pick(a, snap)
    assert cand is not None and (cand.route.id, cand.target.backend) == ("b", "z")
    assert [r.reason for r in refusals] == ["no_worker", "circuit_open"]


def test_a_worker_that_failed_at_start_is_named_not_missing() -> None:
    a = route("a", "x", "y")
    load = Load({}, failed={"x": "ModuleNotFoundError: No module named 'httpx' (worker w1)"})
    picker = Picker(Live(set()), Health({}), load, queue_limit=0)  # type: ignore[arg-type]
    cand, refusals = picker.pick(a, Snapshot([a], []))
    assert cand is None
    assert [r.reason for r in refusals] == ["worker_failed", "no_worker"]
    assert "No module named 'httpx'" in refusals[0].message
    assert "No worker" not in refusals[0].message


def test_full_and_overloaded_queues_are_refused_with_a_retry_time() -> None:
    a = route("a", "x", "y", "z")
    load = Load({}, waiting={"x": 5}, wait={"y": 50.0, "z": 8.0})
    picker = Picker(Live({"x", "y", "z"}), Health({}), load, queue_limit=5)  # type: ignore[arg-type]
    snap = Snapshot([a], [])
    cand, refusals = picker.pick(a, snap, budget=Budget(queue=30.0))
    assert cand is not None and cand.target.backend == "z"
    assert [(r.reason, r.retry_after) for r in refusals] == [
        ("queue_full", 1.0),
        ("overloaded", 20.0),
    ]
    # the client's own timeout counts the service time too: 8 s waiting + 2 s > 9 s
    cand, refusals = picker.pick(a, snap, budget=Budget(queue=30.0, total=9.0))
    assert cand is None and [r.reason for r in refusals][-1] == "overloaded"
    cand, _ = picker.pick(a, snap, budget=Budget(queue=30.0, total=11.0))
    assert cand is not None and cand.target.backend == "z"
    cand, _ = picker.pick(a, snap)  # no budget: only the limit applies
    assert cand is not None and cand.target.backend == "y"
