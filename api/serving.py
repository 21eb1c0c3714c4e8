"""Serving chat completions through the queue: resolve the model, make sure a worker is
there, create and enqueue the job, then read its event stream back as a completion, as
OpenAI SSE chunks, or as raw events for the jobs API and the WebSocket.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain

from api.auth import current_caller
from api.client import Client
from api.routing import UNBOUNDED, Budget, Candidate, Refusal, RefusalReason, queue_full
from api.routing import chain as fallback_chain
from api.schemas import ChatCompletionRequest, completion_body
from api.services import Services
from core.logs import current_request_id
from registry.queries import DeploymentInfo, ModelRoute
from tasks.dispatch import task_message
from tasks.events import StreamEvent, Transcript
from tasks.jobs import QueueFull
from tasks.keys import Event, JobStatus
from workers.errors import (
    ConflictError,
    GatewayTimeoutError,
    ModelNotFoundError,
    RouterError,
    ServiceUnavailableError,
)
from workers.protocol import ChatJob
from workers.providers import passed

log = logging.getLogger(__name__)

IDLE_SLICE = 1.0  # seconds per blocking read; between reads we check deadline and workers


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex[:24]}"


def completion_id(job_id: str) -> str:
    """The `chatcmpl-` id of a job's completion; the same hex, so either finds the other."""
    return "chatcmpl-" + job_id.removeprefix("job_")


@dataclass(frozen=True)
class Submitted:
    """A job on its queue: the model that answers it and the deployment it went to."""

    job_id: str
    route: ModelRoute
    deployment: DeploymentInfo
    created: int
    deadline: float
    replayed: bool = False


@dataclass
class Started:
    """A completion under way: its job, the events up to its first token, and the rest."""

    sub: Submitted
    head: list[StreamEvent]
    rest: Iterator[StreamEvent | None]


class QueueStalled(Exception):
    """The job waited in its queue past QUEUE_WAIT without a worker taking it."""


def fallback_worthy(exc: RouterError) -> bool:
    """Errors another deployment or model may not have: overload, upstream failure, timeout
    of the upstream (not of the whole request), a context too long for this model."""
    return exc.code == "context_length_exceeded" or exc.status_code in (429, 500, 502, 503, 504)


def _unavailable(refusals: list[Refusal], worker_wait: float) -> RouterError:
    """The 503 for a request no deployment could take, naming the first reason."""
    if not refusals:
        return ServiceUnavailableError("No deployment of this model is enabled.")
    first = refusals[0]
    wait = first.retry_after if first.retry_after is not None else worker_wait
    code = "no_worker_available" if first.reason is RefusalReason.NO_WORKER else first.reason.value
    return ServiceUnavailableError(first.message, code=code, retry_after=wait)


class ChatService:
    """The request path shared by /v1/chat/completions, /v1/jobs and /v1/ws."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.worker_wait = float(services.config["WORKER_WAIT"])
        self.timeout = float(services.config["REQUEST_TIMEOUT"])
        self.queue_wait = float(services.config["QUEUE_WAIT"])
        self.queue_limit = int(services.config["QUEUE_LIMIT"])
        self.queue_timeout = float(services.config["QUEUE_TIMEOUT"])
        names = str(services.config.get("FORWARD_HEADERS") or "").split(",")
        self.forward = {n.strip().lower() for n in names if n.strip()}

    def budget(self, client: Client | None) -> Budget:
        """A synchronous request may queue for QUEUE_TIMEOUT and must fit its client's own
        timeout; a durable job (no client) only has to start before it would expire. Either
        waits in its API key's share of the queue."""
        tenant = current_caller().name
        if client is None:
            return Budget(queue=self.timeout, tenant=tenant)
        return Budget(queue=self.queue_timeout or math.inf, total=client.patience, tenant=tenant)

    def resolve(self, model: str) -> ModelRoute:
        """Registry lookup by id or alias; 404 model_not_found like OpenAI, for a model the
        caller's key may not use too (the same answer: its allowlist stays private)."""
        route = self.services.registry.get().resolve(model)
        if route is None or not current_caller().allows(route.id):
            raise ModelNotFoundError(
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
            )
        if not route.enabled:
            primary = route.primary
            hint = f" (set {primary.api_key_env})" if primary.api_key_env else ""
            raise ModelNotFoundError(
                f"The model `{model}` is not enabled: its backend `{primary.backend}` "
                f"is disabled{hint}.",
                param="model",
            )
        return route

    def pick(
        self,
        route: ModelRoute,
        *,
        tried: frozenset[tuple[str, str]] = frozenset(),
        min_context: int = 0,
        wait: bool = True,
        budget: Budget = UNBOUNDED,
    ) -> Candidate:
        """The first usable deployment of the model or its fallbacks. While the only
        reason is that no worker serves them yet, waits up to WORKER_WAIT for one (not when
        falling back); every other refusal (a failed worker, a full or overloaded queue, an
        open circuit) is a 503 at once, naming the first reason."""
        give_up = time.monotonic() + (self.worker_wait if wait else 0)
        caller = current_caller()

        def skip(c: Candidate) -> bool:
            taken = (c.route.id, c.deployment.backend) in tried
            return taken or c.route.context_window <= min_context or not caller.allows(c.route.id)

        while True:
            snapshot = self.services.registry.get()
            cand, refusals = self.services.picker.pick(route, snapshot, skip, budget)
            if cand is not None:
                return cand
            waiting = bool(refusals) and all(r.reason is RefusalReason.NO_WORKER for r in refusals)
            if not waiting or time.monotonic() >= give_up:
                raise _unavailable(refusals, self.worker_wait)
            time.sleep(0.25)

    def forwarded(self, headers: Iterable[tuple[str, str]] | None) -> dict[str, str]:
        """The request headers the operator chose to pass on to backends (FORWARD_HEADERS)."""
        found = {k.lower(): v for k, v in (headers or ()) if k.lower() in self.forward}
        return dict(sorted(found.items()))

    def checked_model(self, req: ChatCompletionRequest, cand: Candidate | None) -> ModelRoute:
        """The model the request names, once the checks that need it passed, before any
        wait for a worker: text that cannot fit the model nor any fallback is a 400
        context_length_exceeded, more tokens than the model's cap a 400 (docs/api.md)."""
        snapshot = self.services.registry.get()
        if cand is None:
            asked = self.resolve(req.model)
        else:  # a deployment or fallback chosen by the caller: the checks stay the model's
            asked = snapshot.resolve(req.model) or cand.route
        req.check_fits(max(r.context_window for r in fallback_chain(asked, snapshot)))
        req.check_max_tokens(asked.max_tokens)
        return asked

    def submit(
        self,
        req: ChatCompletionRequest,
        *,
        idempotency_key: str | None = None,
        digest: str = "",
        headers: Iterable[tuple[str, str]] | None = None,
        cand: Candidate | None = None,
        deadline: float | None = None,
        client: Client | None = None,
    ) -> Submitted:
        """Pick a deployment (unless given), store the job and put it on that queue. With
        a `client` (a synchronous request) the job is owned by this API process and
        cancelled when the client hangs up; without one it is durable (`POST /v1/jobs`).
        A backlog at QUEUE_LIMIT is a 503, or QueueFull when the caller chose `cand`.
        The job gets the model's max_tokens rule and only the request fields its backend
        may be passed (workers/providers.json); see docs/api.md."""
        given = cand is not None
        asked = self.checked_model(req, cand)
        cand = cand or self.pick(asked, budget=self.budget(client))
        route, d = cand.route, cand.deployment
        # the cap is also the default, unless it is the whole context window (discovered
        # models): sent, it would leave the prompt no room
        default = route.max_tokens if route.max_tokens < route.context_window else None
        sampling = req.sampling(route.max_tokens, default)
        now = time.time()
        job = ChatJob(
            id=new_job_id(),
            model=route.id,
            backend=d.backend,
            kind=d.kind,
            upstream_model=d.upstream,
            messages=req.messages_as_dicts(),
            sampling=sampling,
            extra=passed(req.extra(), d.backend, d.kind),
            base_url=d.base_url,
            api_key_env=d.api_key_env,
            headers=self.forwarded(headers),
            created=now,
            deadline=deadline or now + self.timeout,
            request_id=current_request_id(),
        )
        message = task_message(job.id, 1, d.queue)
        caller = current_caller()
        try:
            job_id = self.services.jobs.create(
                job,
                d.queue,
                idempotency_key=idempotency_key,
                digest=digest,
                message=message,
                owner=client.owner if client else None,
                limit=self.queue_limit,
                tenant=caller.name,
                max_parallel=caller.max_parallel,
            )
        except QueueFull:
            if given:
                raise  # the caller moves on to its next candidate
            raise _unavailable([queue_full(d.queue, self.queue_limit)], self.worker_wait) from None
        if client is not None:
            client.attach(job_id)
        replayed = job_id != job.id  # the same Idempotency-Key and body were seen before
        end = job.deadline or now
        return Submitted(job_id, route, d, int(now), end, replayed)

    def submit_now(
        self,
        req: ChatCompletionRequest,
        route: ModelRoute,
        *,
        headers: list[tuple[str, str]],
        client: Client | None,
        tried: set[tuple[str, str]],
        deadline: float | None = None,
        min_context: int = 0,
        wait: bool = True,
    ) -> Submitted:
        """Pick and submit, moving on to the next candidate when a queue fills up between
        the choice and the submission (the limit is checked exactly in Redis)."""
        budget = self.budget(client)
        full_queue = ""
        while True:
            try:
                cand = self.pick(
                    route,
                    tried=frozenset(tried),
                    min_context=min_context,
                    wait=wait,
                    budget=budget,
                )
            except RouterError:
                if not full_queue:
                    raise
                refusal = queue_full(full_queue, self.queue_limit)
                raise _unavailable([refusal], self.worker_wait) from None
            try:
                return self.submit(
                    req, headers=headers, cand=cand, deadline=deadline, client=client
                )
            except QueueFull as full:
                log.info("queue %s full (%d waiting)", cand.deployment.queue, full.waiting)
                tried.add((cand.route.id, cand.deployment.backend))
                full_queue, wait = full_queue or cand.deployment.queue, False

    def start(
        self,
        req: ChatCompletionRequest,
        headers: Iterable[tuple[str, str]] | None = None,
        client: Client | None = None,
        on_submit: Callable[[Submitted], object] | None = None,
    ) -> Started:
        """Submit and read up to the first token, falling back before it if need be: to
        the model's next deployment or fallback model when the first fails (overload, 5xx,
        timeout, context too long) or its job waits in the queue past QUEUE_WAIT. Once a
        token has arrived, the answer is this one's. `on_submit` is told of each job as it
        is submitted: the last one told answers (api/accounting.py owes its record)."""
        headers = list(headers or ())
        route = self.resolve(req.model)
        tried: set[tuple[str, str]] = set()
        sub = self.submit_now(req, route, headers=headers, client=client, tried=tried)
        if on_submit is not None:
            on_submit(sub)
        queue_wait = self.queue_wait
        while True:
            tried.add((sub.route.id, sub.deployment.backend))
            events = self.events(sub.job_id, sub.deployment.queue, sub.deadline)
            min_context = 0
            try:
                watched = self._watch_queue(events, sub, queue_wait)
                return Started(sub, first_events(watched), events)
            except QueueStalled:
                failure: RouterError | None = None
            except RouterError as exc:
                if not fallback_worthy(exc) or time.time() >= sub.deadline:
                    raise
                failure = exc
                if exc.code == "context_length_exceeded":
                    min_context = sub.route.context_window
            try:
                nxt = self.submit_now(
                    req,
                    route,
                    headers=headers,
                    client=client,
                    tried=tried,
                    deadline=sub.deadline,
                    min_context=min_context,
                    wait=False,
                )
            except RouterError:
                if failure is not None:
                    raise failure from None
                queue_wait = 0  # nowhere else to go: keep waiting for this job
                continue
            if failure is None:
                self.services.jobs.cancel(sub.job_id)
            log.info(
                "job %s on %s: %s; fell back to %s on %s",
                sub.job_id,
                sub.deployment.backend,
                failure.code if failure else "queued too long",
                nxt.route.id,
                nxt.deployment.backend,
            )
            sub = nxt
            if on_submit is not None:
                on_submit(sub)

    def _watch_queue(
        self, events: Iterator[StreamEvent | None], sub: Submitted, limit: float
    ) -> Iterator[StreamEvent | None]:
        """Pass events through; raise QueueStalled if none came for `limit` seconds and
        the job is still queued (0: never)."""
        since, seen = time.monotonic(), False
        for event in events:
            seen = seen or event is not None
            if not seen and limit and time.monotonic() - since > limit:
                rec = self.services.jobs.record(sub.job_id)
                if rec is not None and rec.status is JobStatus.QUEUED:
                    raise QueueStalled(sub.job_id)
            yield event

    def events(
        self, job_id: str, queue: str, deadline: float, after: str = "0-0", owner: bool = True
    ) -> Iterator[StreamEvent | None]:
        """Events after `after` up to the terminal one; None on each idle second.

        Never hangs: past `deadline` the job is cancelled and 504 raised. The `owner` (the
        request waiting for this answer) also gives up with 503, cancelling the job, when no
        worker is left on `queue` for WORKER_WAIT seconds; a mere follower of a queued job
        (jobs SSE, job WebSocket) keeps waiting for a worker until the deadline.
        """
        orphaned_since: float | None = None
        while True:
            remaining = deadline - time.time()
            if remaining <= 0:
                self.services.jobs.cancel(job_id)
                raise GatewayTimeoutError("The request timed out before the model finished.")
            batch = self.services.jobs.read(job_id, after, int(min(remaining, IDLE_SLICE) * 1000))
            for event in batch:
                after = event.id
                yield event
                if event.type.terminal:
                    return
            if batch:
                continue
            if not owner or self.services.live.any_on_queue(queue):
                orphaned_since = None
            elif orphaned_since is None:
                orphaned_since = time.monotonic()
            elif time.monotonic() - orphaned_since > self.worker_wait:
                self.services.jobs.cancel(job_id)
                raise ServiceUnavailableError(
                    f"The worker serving queue `{queue}` went away and none took over.",
                    code="no_worker_available",
                    retry_after=self.worker_wait,
                )
            yield None

    def complete(self, started: Started) -> dict[str, object]:
        """Wait for the whole answer and return it as a `chat.completion`."""
        sub, transcript = started.sub, Transcript()
        for event in chain(started.head, started.rest):
            if event is not None:
                transcript.add(event)
        final = transcript.final
        raise_for_final(final)
        assert final is not None
        return completion_body(
            completion_id(sub.job_id),
            sub.created,
            sub.route.id,
            transcript.text,
            final.finish_reason,
            final.usage,
            transcript.tools.calls(),
            transcript.logprobs,
        )


def raise_for_final(final: StreamEvent | None) -> None:
    """Turn an error or cancelled terminal event into the exception the client should get."""
    if final is None:
        raise RouterError("The job ended without a result.")
    if final.type is Event.ERROR and final.error:
        raise RouterError.from_info(final.error)
    if final.type is Event.CANCELLED:
        raise ConflictError("The job was cancelled.", code="job_cancelled")


def first_events(events: Iterable[StreamEvent | None]) -> list[StreamEvent]:
    """Read up to the first token (or the end) before any header is sent, so that an error
    raised before generation starts gets its real HTTP status instead of a 200 stream."""
    head: list[StreamEvent] = []
    for event in events:
        if event is None:
            continue
        head.append(event)
        if event.type is Event.TOKEN or event.type.terminal:
            break
    if head and head[-1].type in (Event.ERROR, Event.CANCELLED):
        raise_for_final(head[-1])
    return head
