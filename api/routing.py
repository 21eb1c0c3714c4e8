"""Which deployment serves a request, from live state shared by every API replica.

A model's deployments are tried in the order of its policy, then those of its fallback
models (in order, each followed by its own fallbacks). A candidate is usable when a live
worker serves it, its backlog is under the limit, a job sent there now would start within
ROUTER_QUEUE_TIMEOUT and could finish within the client's own timeout, and its backend's
circuit lets it through. Refusals other than "no worker yet" are answered at once: overload
is refused fast, with Retry-After, never left to time out.

    priority      deployments in priority order (the primary first)
    least-loaded  fewest (running + queued) jobs per unit of live worker capacity
    latency       lowest recent median time to first token (unknown counts as fastest)
    weighted      random, in proportion to the deployments' weights
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from api.load import LoadView
from registry.queries import ModelRoute, Snapshot
from tasks.health import BackendHealth

#: Kinds whose workers announce the models they can serve; a deployment of one of these
#: kinds is usable only while a live worker announces its model (local: loaded; llm-d:
#: served by the cluster, as its /v1/models says).
ANNOUNCING_KINDS = frozenset({"local", "llm-d"})


@dataclass(frozen=True)
class Target:
    """One deployment of a model: where its jobs go and what that backend calls it."""

    backend: str
    kind: str
    queue: str
    upstream: str
    base_url: str | None
    api_key_env: str | None
    weight: float = 1.0


@dataclass(frozen=True)
class Candidate:
    """A model (the one that will answer) on one of its deployments."""

    route: ModelRoute
    target: Target


def targets(route: ModelRoute) -> list[Target]:
    """The enabled deployments of a route, primary first."""
    return [
        Target(d.backend, d.kind, d.queue, d.upstream, d.base_url, d.api_key_env, d.weight)
        for d in route.live_deployments()
    ]


def chain(route: ModelRoute, snapshot: Snapshot) -> list[ModelRoute]:
    """The model, then its fallbacks breadth-first (each once; unknown or disabled skipped)."""
    out, seen, i = [route], {route.id}, 0
    while i < len(out):
        for name in out[i].fallbacks:
            nxt = snapshot.resolve(name)
            if nxt is not None and nxt.enabled and nxt.id not in seen:
                seen.add(nxt.id)
                out.append(nxt)
        i += 1
    return out


def ordered(route: ModelRoute, load: LoadView) -> list[Target]:
    """The route's deployments in the order its policy prefers now."""
    found = targets(route)
    policy = route.policy
    if len(found) < 2 or policy == "priority":
        return found
    if policy == "least-loaded":

        def busy(t: Target) -> float:
            running, capacity = load.load(t)
            return (running + load.depth(t.queue)) / max(capacity, 1)

        return sorted(found, key=busy)  # stable: ties keep priority order
    if policy == "latency":
        return sorted(found, key=lambda t: load.ttft(t.backend))
    return _weighted(found)


def _weighted(found: Iterable[Target]) -> list[Target]:
    pool, out = list(found), []
    while pool:
        pick = random.choices(range(len(pool)), weights=[max(t.weight, 1e-9) for t in pool])[0]
        out.append(pool.pop(pick))
    return out


def candidates(route: ModelRoute, snapshot: Snapshot, load: LoadView) -> Iterator[Candidate]:
    """Every deployment of the model and then of its fallbacks, in preference order."""
    for model in chain(route, snapshot):
        for target in ordered(model, load):
            yield Candidate(model, target)


#: Why a candidate could not take a request. Only `no_worker` is worth waiting for (a
#: worker may be starting); every other refusal is answered at once.
REFUSALS = ("no_worker", "worker_failed", "queue_full", "overloaded", "circuit_open")


@dataclass(frozen=True)
class Refusal:
    """Why a candidate could not take a request (one of REFUSALS), and for how long."""

    reason: str
    message: str
    retry_after: float | None = None


@dataclass(frozen=True)
class Budget:
    """How long a request may wait: in its queue before a worker starts it, and in all
    (the client's own timeout, when it said one)."""

    queue: float = math.inf
    total: float | None = None


UNBOUNDED = Budget()


class Picker:
    """The first usable candidate of a request, or why there is none."""

    def __init__(self, live: Any, health: BackendHealth, load: LoadView, queue_limit: int):
        self.live, self.health, self.load, self.queue_limit = live, health, load, queue_limit

    def pick(
        self, route: ModelRoute, snapshot: Snapshot, skip: Any = None, budget: Budget = UNBOUNDED
    ) -> tuple[Candidate | None, list[Refusal]]:
        refusals: list[Refusal] = []
        for cand in candidates(route, snapshot, self.load):
            if skip is not None and skip(cand):
                continue
            refusal = self.refuse(cand.target, budget)
            if refusal is None:
                return cand, refusals
            refusals.append(refusal)
        return None, refusals

    def refuse(self, t: Target, budget: Budget = UNBOUNDED) -> Refusal | None:
        """None when `t` can take a job now. The breaker is asked last: letting a request
        through as a half-open probe is a commitment to send it."""
        if not self.live.any_target(t.kind, t.queue, t.upstream):
            return self._no_worker(t)
        if self.queue_limit and self.load.depth(t.queue) >= self.queue_limit:
            return queue_full(t.queue, self.queue_limit, self.load.queue_wait(t))
        overload = self._overloaded(t, budget)
        if overload is not None:
            return overload
        if self.health.allow(t.backend) == 0:
            return Refusal(
                "circuit_open",
                f"Backend `{t.backend}` is failing and its circuit is open; it is retried "
                f"within {self.health.policy.cooldown:g} s.",
                self.health.policy.cooldown,
            )
        return None

    def _no_worker(self, t: Target) -> Refusal:
        failure = self.load.failure(t.queue)
        if failure is not None:
            return Refusal(
                "worker_failed",
                f"The worker for queue `{t.queue}` is running but failed to start its "
                f"`{t.kind}` backend: {failure}. Fix that and restart the worker.",
            )
        model = f"model `{t.upstream}` on " if t.kind in ANNOUNCING_KINDS else ""
        return Refusal(
            "no_worker",
            f"No worker is serving {model}queue `{t.queue}`. Start one with "
            f"`celery -A tasks worker -Q {t.queue}`.",
        )

    def _overloaded(self, t: Target, budget: Budget) -> Refusal | None:
        """Refuse when the job would wait longer than the budget allows before it starts,
        or could not finish within the client's own timeout."""
        limit = budget.queue
        if budget.total is not None:
            limit = min(limit, budget.total - self.load.service_time(t.backend))
        if math.isinf(limit):
            return None
        limit = max(limit, 0.0)
        wait = self.load.queue_wait(t)
        if wait <= limit:
            return None
        return Refusal(
            "overloaded",
            f"Queue `{t.queue}` is busy: a new job would wait about {wait:.0f} s before it "
            f"starts, more than the {limit:.0f} s this request can wait. Retry later.",
            max(1.0, wait - limit),
        )


def queue_full(queue: str, limit: int, wait: float = 0.0) -> Refusal:
    """The refusal for a queue whose backlog is at ROUTER_QUEUE_LIMIT."""
    return Refusal(
        "queue_full", f"Queue `{queue}` has {limit}+ jobs waiting. Retry later.", max(1.0, wait)
    )
