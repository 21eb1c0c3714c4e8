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
from enum import StrEnum
from typing import Any

from api.load import LoadView
from core.kinds import announces
from registry.queries import DeploymentInfo, ModelRoute, Snapshot
from tasks.health import BackendHealth, Verdict
from tasks.jobs import ANONYMOUS


@dataclass(frozen=True)
class Candidate:
    """A model (the one that will answer) on one of its deployments."""

    route: ModelRoute
    deployment: DeploymentInfo


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


def ordered(route: ModelRoute, load: LoadView) -> list[DeploymentInfo]:
    """The route's enabled deployments in the order its policy prefers now."""
    found = list(route.live_deployments())
    policy = route.policy
    if len(found) < 2 or policy == "priority":
        return found
    if policy == "least-loaded":

        def busy(d: DeploymentInfo) -> float:
            running, capacity = load.load(d)
            return (running + load.depth(d.queue)) / max(capacity, 1)

        return sorted(found, key=busy)  # stable: ties keep priority order
    if policy == "latency":
        return sorted(found, key=lambda d: load.ttft(d.backend))
    return _weighted(found)


def _weighted(found: Iterable[DeploymentInfo]) -> list[DeploymentInfo]:
    pool, out = list(found), []
    while pool:
        pick = random.choices(range(len(pool)), weights=[max(d.weight, 1e-9) for d in pool])[0]
        out.append(pool.pop(pick))
    return out


def candidates(route: ModelRoute, snapshot: Snapshot, load: LoadView) -> Iterator[Candidate]:
    """Every deployment of the model and then of its fallbacks, in preference order."""
    for model in chain(route, snapshot):
        for deployment in ordered(model, load):
            yield Candidate(model, deployment)


class RefusalReason(StrEnum):
    """Why a candidate could not take a request. Only NO_WORKER is worth waiting for (a
    worker may be starting); every other refusal is answered at once. The values are the
    error codes clients see, except NO_WORKER's (`no_worker_available`)."""

    NO_WORKER = "no_worker"
    WORKER_FAILED = "worker_failed"
    QUEUE_FULL = "queue_full"
    OVERLOADED = "overloaded"
    CIRCUIT_OPEN = "circuit_open"


@dataclass(frozen=True)
class Refusal:
    """Why a candidate could not take a request, and for how long."""

    reason: RefusalReason
    message: str
    retry_after: float | None = None


@dataclass(frozen=True)
class Budget:
    """How long a request may wait: in its queue before a worker starts it, and in all
    (the client's own timeout, when it said one); and whose turn it waits for."""

    queue: float = math.inf
    total: float | None = None
    tenant: str = ANONYMOUS  # the API key whose share of each queue the job waits in


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
            refusal = self.refuse(cand.deployment, budget)
            if refusal is None:
                return cand, refusals
            refusals.append(refusal)
        return None, refusals

    def refuse(self, d: DeploymentInfo, budget: Budget = UNBOUNDED) -> Refusal | None:
        """None when deployment `d` can take a job now. The breaker is asked last: letting
        a request through as a half-open probe is a commitment to send it."""
        if not self.live.any_target(d.kind, d.queue, d.upstream):
            return self._no_worker(d)
        if self.queue_limit and self.load.depth(d.queue, budget.tenant) >= self.queue_limit:
            return queue_full(d.queue, self.queue_limit, self.load.queue_wait(d, budget.tenant))
        overload = self._overloaded(d, budget)
        if overload is not None:
            return overload
        if self.health.allow(d.backend) is Verdict.OPEN:
            return Refusal(
                RefusalReason.CIRCUIT_OPEN,
                f"Backend `{d.backend}` is failing and its circuit is open; it is retried "
                f"within {self.health.policy.cooldown:g} s.",
                self.health.policy.cooldown,
            )
        return None

    def _no_worker(self, d: DeploymentInfo) -> Refusal:
        failure = self.load.failure(d.queue)
        if failure is not None:
            return Refusal(
                RefusalReason.WORKER_FAILED,
                f"The worker for queue `{d.queue}` is running but failed to start its "
                f"`{d.kind}` backend: {failure}. Fix that and restart the worker.",
            )
        model = f"model `{d.upstream}` on " if announces(d.kind) else ""
        return Refusal(
            RefusalReason.NO_WORKER,
            f"No worker is serving {model}queue `{d.queue}`. Start one with "
            f"`celery -A tasks worker -Q {d.queue}`.",
        )

    def _overloaded(self, d: DeploymentInfo, budget: Budget) -> Refusal | None:
        """Refuse when the job would wait longer than the budget allows before it starts,
        or could not finish within the client's own timeout."""
        limit = budget.queue
        if budget.total is not None:
            limit = min(limit, budget.total - self.load.service_time(d.backend))
        if math.isinf(limit):
            return None
        limit = max(limit, 0.0)
        wait = self.load.queue_wait(d, budget.tenant)
        if wait <= limit:
            return None
        return Refusal(
            RefusalReason.OVERLOADED,
            f"Queue `{d.queue}` is busy: a new job would wait about {wait:.0f} s before it "
            f"starts, more than the {limit:.0f} s this request can wait. Retry later.",
            max(1.0, wait - limit),
        )


def queue_full(queue: str, limit: int, wait: float = 0.0) -> Refusal:
    """The refusal for a queue whose backlog is at ROUTER_QUEUE_LIMIT."""
    return Refusal(
        RefusalReason.QUEUE_FULL,
        f"Queue `{queue}` has {limit}+ jobs waiting. Retry later.",
        max(1.0, wait),
    )
