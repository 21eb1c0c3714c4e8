"""Serving chat completions through the queue: resolve the model, make sure a worker is
there, create and enqueue the job, then read its event stream back as a completion, as
OpenAI SSE chunks, or as raw events for the jobs API and the WebSocket.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from api.extension import ANNOUNCING_KINDS, Router
from api.schemas import ChatCompletionRequest, completion_body
from registry.queries import ModelRoute
from tasks.dispatch import enqueue
from tasks.events import StreamEvent, Transcript
from tasks.keys import Event
from workers.errors import (
    ConflictError,
    GatewayTimeoutError,
    ModelNotFoundError,
    RouterError,
    ServiceUnavailableError,
)
from workers.protocol import ChatJob

IDLE_SLICE = 1.0  # seconds per blocking read; between reads we check deadline and workers


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex[:24]}"


def completion_id(job_id: str) -> str:
    """The `chatcmpl-` id of a job's completion; the same hex, so either finds the other."""
    return "chatcmpl-" + job_id.removeprefix("job_")


@dataclass(frozen=True)
class Submitted:
    """A job on its queue, with the registry route that chose the queue."""

    job_id: str
    route: ModelRoute
    created: int
    deadline: float
    replayed: bool = False


class ChatService:
    """The request path shared by /v1/chat/completions, /v1/jobs and /v1/ws."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.worker_wait = float(router.config["WORKER_WAIT"])
        self.timeout = float(router.config["REQUEST_TIMEOUT"])
        names = str(router.config.get("FORWARD_HEADERS") or "").split(",")
        self.forward = {n.strip().lower() for n in names if n.strip()}

    def resolve(self, model: str) -> ModelRoute:
        """Registry lookup by id or alias; 404 model_not_found like OpenAI."""
        route = self.router.registry.get().resolve(model)
        if route is None:
            raise ModelNotFoundError(
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
            )
        if not route.enabled:
            hint = f" (set {route.api_key_env})" if route.api_key_env else ""
            raise ModelNotFoundError(
                f"The model `{model}` is not enabled: its backend `{route.backend}` "
                f"is disabled{hint}.",
                param="model",
            )
        return route

    def wait_for_worker(self, route: ModelRoute) -> None:
        """Return once a live worker can serve `route`; 503 after WORKER_WAIT seconds."""
        give_up = time.monotonic() + self.worker_wait
        while not self.router.live.any(route):
            if time.monotonic() >= give_up:
                what = f"model `{route.upstream}` on " if route.kind in ANNOUNCING_KINDS else ""
                raise ServiceUnavailableError(
                    f"No worker is serving {what}queue `{route.queue}`. Start one with "
                    f"`celery -A tasks worker -Q {route.queue}`.",
                    code="no_worker_available",
                    retry_after=self.worker_wait,
                )
            time.sleep(0.25)

    def forwarded(self, headers: Iterable[tuple[str, str]] | None) -> dict[str, str]:
        """The request headers the operator chose to pass on to backends (FORWARD_HEADERS)."""
        found = {k.lower(): v for k, v in (headers or ()) if k.lower() in self.forward}
        return dict(sorted(found.items()))

    def submit(
        self,
        req: ChatCompletionRequest,
        *,
        idempotency_key: str | None = None,
        digest: str = "",
        headers: Iterable[tuple[str, str]] | None = None,
    ) -> Submitted:
        """Validate routing, store the job and put it on its backend's queue."""
        route = self.resolve(req.model)
        self.wait_for_worker(route)
        now = time.time()
        sampling = req.sampling()
        job = ChatJob(
            id=new_job_id(),
            model=route.id,
            backend=route.backend,
            kind=route.kind,
            upstream_model=route.upstream,
            messages=req.messages_as_dicts(),
            sampling=sampling,
            extra=req.extra(),
            base_url=route.base_url,
            api_key_env=route.api_key_env,
            headers=self.forwarded(headers),
            created=now,
            deadline=now + self.timeout,
        )
        job_id = self.router.jobs.create(
            job, route.queue, idempotency_key=idempotency_key, digest=digest
        )
        if job_id != job.id:  # the same Idempotency-Key and body were seen before
            return Submitted(job_id, route, int(now), job.deadline or now, replayed=True)
        enqueue(self.router.celery, job.id, 1, route.queue)
        return Submitted(job.id, route, int(now), job.deadline or now)

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
                self.router.jobs.cancel(job_id)
                raise GatewayTimeoutError("The request timed out before the model finished.")
            batch = self.router.jobs.read(job_id, after, int(min(remaining, IDLE_SLICE) * 1000))
            for event in batch:
                after = event.id
                yield event
                if event.type.terminal:
                    return
            if batch:
                continue
            if not owner or self.router.live.any_on_queue(queue):
                orphaned_since = None
            elif orphaned_since is None:
                orphaned_since = time.monotonic()
            elif time.monotonic() - orphaned_since > self.worker_wait:
                self.router.jobs.cancel(job_id)
                raise ServiceUnavailableError(
                    f"The worker serving queue `{queue}` went away and none took over.",
                    code="no_worker_available",
                    retry_after=self.worker_wait,
                )
            yield None

    def complete(self, sub: Submitted) -> dict[str, object]:
        """Wait for the whole answer and return it as a `chat.completion`."""
        transcript = Transcript()
        for event in self.events(sub.job_id, sub.route.queue, sub.deadline):
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
