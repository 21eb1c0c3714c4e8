"""Deployment order by policy, fallback chains, why a candidate is refused and what that
refusal tells the client, live-worker checks, and discovered routes."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable

from api.routing import Budget, Picker, Refusal, RefusalReason, chain, ordered
from api.services import DISCOVERED_CONTEXT, LiveWorkers, discovered_route
from api.serving import _unavailable
from registry.queries import BackendInfo, DeploymentInfo, ModelRoute, Snapshot, deployment_info
from tasks.health import Verdict


def backend(name: str, enabled: bool = True) -> BackendInfo:
    return BackendInfo(name, "openai-compatible", name, None, None, enabled)


def route(model_id: str, *backends: str, **kw: object) -> ModelRoute:
    deps = tuple(deployment_info(backend(b), model_id, i, 1.0 + i) for i, b in enumerate(backends))
    fields: dict[str, object] = dict(
        id=model_id,
        context_window=1000,
        max_tokens=100,
        input_price=0.0,
        output_price=0.0,
        aliases=(),
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

    def load(self, d: DeploymentInfo) -> tuple[int, int]:
        return self.running.get(d.backend, 0), 10

    def depth(self, queue: str, tenant: str | None = None) -> int:
        return self.waiting.get(queue, 0)

    def queue_wait(self, d: DeploymentInfo, tenant: str = "-") -> float:
        return self.wait.get(d.queue, 0.0)

    def service_time(self, backend: str) -> float:
        return 2.0

    def failure(self, queue: str) -> str | None:
        return self.failed.get(queue)

    def ttft(self, backend: str) -> float:
        return self._ttft.get(backend, 0.0)


def names(deployments: list[DeploymentInfo]) -> list[str]:
    return [d.backend for d in deployments]


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
    c = route("c", "z", deployments=(deployment_info(backend("z", enabled=False), "c"),))
    d = route("d", "w")
    snap = Snapshot([a, b, c, d], [])
    assert [r.id for r in chain(a, snap)] == ["a", "b", "d"]  # c is disabled; a not twice


class Live:
    def __init__(self, alive: set[str]) -> None:
        self.alive = alive

    def any_target(self, kind: str, queue: str, upstream: str) -> bool:
        return queue in self.alive


class Health:
    def __init__(self, verdicts: dict[str, Verdict]) -> None:
        self.verdicts = verdicts
        self.policy = type("P", (), {"cooldown": 10.0})()

    def allow(self, backend: str) -> Verdict:
        return self.verdicts.get(backend, Verdict.CLOSED)


def test_picker_skips_dead_and_open_deployments_and_says_why() -> None:
    a = route("a", "x", "y", fallbacks=("b",))
    b = route("b", "z")
    snap = Snapshot([a, b], [])
    health = Health({"y": Verdict.OPEN})
    picker = Picker(Live({"y", "z"}), health, Load({}), queue_limit=0)  # type: ignore[arg-type]
    cand, refusals = picker.pick(a, snap)
    assert cand is not None and (cand.route.id, cand.deployment.backend) == ("b", "z")
    assert [r.reason for r in refusals] == [RefusalReason.NO_WORKER, RefusalReason.CIRCUIT_OPEN]


def test_a_worker_that_failed_at_start_is_named_not_missing() -> None:
    a = route("a", "x", "y")
    load = Load({}, failed={"x": "ModuleNotFoundError: No module named 'httpx' (worker w1)"})
    picker = Picker(Live(set()), Health({}), load, queue_limit=0)  # type: ignore[arg-type]
    cand, refusals = picker.pick(a, Snapshot([a], []))
    assert cand is None
    assert [r.reason for r in refusals] == [RefusalReason.WORKER_FAILED, RefusalReason.NO_WORKER]
    assert "No module named 'httpx'" in refusals[0].message
    assert "No worker" not in refusals[0].message


def test_full_and_overloaded_queues_are_refused_with_a_retry_time() -> None:
    a = route("a", "x", "y", "z")
    load = Load({}, waiting={"x": 5}, wait={"y": 50.0, "z": 8.0})
    picker = Picker(Live({"x", "y", "z"}), Health({}), load, queue_limit=5)  # type: ignore[arg-type]
    snap = Snapshot([a], [])
    cand, refusals = picker.pick(a, snap, budget=Budget(queue=30.0))
    assert cand is not None and cand.deployment.backend == "z"
    assert [(r.reason, r.retry_after) for r in refusals] == [
        (RefusalReason.QUEUE_FULL, 1.0),
        (RefusalReason.OVERLOADED, 20.0),
    ]
    # the client's own timeout counts the service time too: 8 s waiting + 2 s > 9 s
    cand, refusals = picker.pick(a, snap, budget=Budget(queue=30.0, total=9.0))
    assert cand is None and refusals[-1].reason is RefusalReason.OVERLOADED
    cand, _ = picker.pick(a, snap, budget=Budget(queue=30.0, total=11.0))
    assert cand is not None and cand.deployment.backend == "z"
    cand, _ = picker.pick(a, snap)  # no budget: only the limit applies
    assert cand is not None and cand.deployment.backend == "y"


def test_refusals_become_503s_with_the_same_codes() -> None:
    assert [r.value for r in RefusalReason] == [
        "no_worker", "worker_failed", "queue_full", "overloaded", "circuit_open",
    ]  # fmt: skip
    waiting = _unavailable([Refusal(RefusalReason.NO_WORKER, "none yet")], 7.0)
    assert (waiting.status_code, waiting.code, waiting.retry_after) == (
        503, "no_worker_available", 7.0,
    )  # fmt: skip
    full = _unavailable([Refusal(RefusalReason.QUEUE_FULL, "full", 2.0)], 7.0)
    assert (full.code, full.retry_after) == ("queue_full", 2.0)
    assert type(full.code) is str  # the plain value, not the enum, reaches the client


def test_a_discovered_model_routes_to_its_cluster() -> None:
    gw = BackendInfo("llm-d", "llm-d", "llm-d", "http://gw/v1", "GW_KEY", True)
    found = discovered_route(gw, "org/m", {"llmd_models": '{"org/m": 4096}', "started": "12.7"})
    assert (found.id, found.context_window, found.max_tokens, found.created) == (
        "org/m", 4096, 4096, 12,
    )  # fmt: skip
    assert found.deployments == (deployment_info(gw, "org/m"),) and found.enabled
    assert found.primary.upstream == "org/m" and found.primary.api_key_env == "GW_KEY"
    bare = discovered_route(gw, "other", {"llmd_models": "not json"})
    assert bare.context_window == DISCOVERED_CONTEXT and bare.created == 0


class Liveness:
    """Counts live workers per queue (and per queue and model) like tasks.liveness."""

    def __init__(self) -> None:
        self.queues: dict[str, int] = {}
        self.models: dict[tuple[str, str], int] = {}
        self.asked = 0

    def live_counts(self, queues: Iterable[str]) -> dict[str, int]:
        self.asked += 1
        return {q: self.queues.get(q, 0) for q in queues}

    def live_model_counts(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        self.asked += 1
        return {p: self.models.get(p, 0) for p in pairs}


def test_live_workers_trust_only_a_positive_answer() -> None:
    liveness = Liveness()
    live = LiveWorkers(liveness, ttl=60)  # type: ignore[arg-type]
    assert not live.any_target("openai-compatible", "q", "m")
    liveness.queues["q"] = 1
    assert live.any_target("openai-compatible", "q", "m")  # no answer was kept: asked again
    asked = liveness.asked
    assert live.any_on_queue("q") and liveness.asked == asked  # the same key, kept
    assert not live.any_target("local", "q", "m")  # an announcing kind asks per model
    liveness.models[("q", "m")] = 2
    assert live.any_target("local", "q", "m")


def test_models_count_live_workers_of_their_primary() -> None:
    liveness = Liveness()
    liveness.queues, liveness.models = {"x": 3}, {("l", "b"): 1}
    local = dataclasses.replace(route("b", "l"), deployments=(
        DeploymentInfo("l", "local", "l", "b", None, None, enabled=True),
    ))  # fmt: skip
    live = LiveWorkers(liveness)  # type: ignore[arg-type]
    assert live.counts([route("a", "x", "y"), local, route("c", "y")]) == {"a": 3, "b": 1, "c": 0}
    assert liveness.asked == 2  # one round trip per kind of target
