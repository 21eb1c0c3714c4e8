"""Prometheus metrics of the API: what each chat completion did, and, at scrape time, what
Redis says about queues, workers and circuits.

    router_requests_total{model,backend,status}        counter  finished chat completions
    router_request_latency_seconds{model,backend}      histogram request start -> last event
    router_time_to_first_token_seconds{model,backend}  histogram request start -> first token
    router_prompt_tokens_total{model,backend}          counter
    router_completion_tokens_total{model,backend}      counter
    router_fallbacks_total{model,fallback}             counter  answered by another model
    router_http_requests_total{method,endpoint,status} counter  every HTTP response
    router_request_log_dropped_total                   counter  log entries dropped (queue full)
    router_queue_depth{queue}                          gauge    jobs accepted, not yet started
    router_live_workers{queue}                         gauge    workers with a live heartbeat
    router_circuit_open{backend}                       gauge    1 while the breaker is open
    router_redis_up                                    gauge    0: this scrape could not read Redis
    router_redis_memory_used_bytes                     gauge    Redis' used_memory (INFO memory)
    router_redis_memory_max_bytes                      gauge    Redis' maxmemory (0: no limit)

`model` is the model asked for (aliases resolved; `unknown` if it is not in the registry),
`backend` the one that answered, `status` the HTTP status as text (499: the client went
away or cancelled). Workers expose nothing: the gauges read their state from Redis.

Under gunicorn every worker process counts its own requests. With PROMETHEUS_MULTIPROC_DIR
set in the environment the process starts with (not only in .env: prometheus_client reads it
at import), to a directory emptied at start, each process writes its samples there and a
scrape sums them all. Unset, the process's default registry is used: right for
one process, but with `-w 2` each scrape sees only the worker that answered it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from flask import Flask, Response, current_app, g, has_request_context, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from api.extension import Router
from api.serving import ChatService, Started, Submitted
from registry.requestlog import LogEntry, cost_usd
from tasks.events import StreamEvent
from tasks.keys import Event
from tasks.metrics import current_request_id, read_cluster
from workers.errors import RouterError

log = logging.getLogger(__name__)

OK = "200"
CLIENT_GONE = "499"  # nginx's "client closed request": went away or cancelled
UNKNOWN = "unknown"  # model label of a request for a model the registry does not have
NONE = "none"  # backend label of a request that never reached a backend

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class _Metrics:
    requests: Counter
    latency: Histogram
    ttft: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter
    fallbacks: Counter
    http: Counter
    log_dropped: Counter


_metrics: _Metrics | None = None
_metrics_lock = threading.Lock()


def _m() -> _Metrics:
    """The process's metrics, made on first use (registered in prometheus' REGISTRY)."""
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                mb = ("model", "backend")
                _metrics = _Metrics(
                    Counter("router_requests", "Finished chat completions.", (*mb, "status")),
                    Histogram(
                        "router_request_latency_seconds",
                        "Chat completion time, request start to last event.",
                        mb,
                        buckets=LATENCY_BUCKETS,
                    ),
                    Histogram(
                        "router_time_to_first_token_seconds",
                        "Request start to first token, queueing included.",
                        mb,
                        buckets=TTFT_BUCKETS,
                    ),
                    Counter("router_prompt_tokens", "Prompt tokens of completions.", mb),
                    Counter("router_completion_tokens", "Generated tokens.", mb),
                    Counter(
                        "router_fallbacks",
                        "Completions answered by a fallback model.",
                        ("model", "fallback"),
                    ),
                    Counter(
                        "router_http_requests", "HTTP responses.", ("method", "endpoint", "status")
                    ),
                    Counter(
                        "router_request_log_dropped", "Request-log entries dropped: queue full."
                    ),
                )
    return _metrics


def record_completion(
    model: str,
    backend: str,
    status: str,
    latency_s: float,
    ttft_s: float | None,
    prompt_tokens: int,
    completion_tokens: int,
    fallback: str | None,
) -> None:
    """Count one finished chat completion (see the module docstring for the labels)."""
    m, labels = _m(), (model, backend or NONE)
    m.requests.labels(*labels, status).inc()
    m.latency.labels(*labels).observe(latency_s)
    if ttft_s is not None:
        m.ttft.labels(*labels).observe(ttft_s)
    if prompt_tokens:
        m.prompt_tokens.labels(*labels).inc(prompt_tokens)
    if completion_tokens:
        m.completion_tokens.labels(*labels).inc(completion_tokens)
    if fallback:
        m.fallbacks.labels(model, fallback).inc()


def record_log_drop(n: int = 1) -> None:
    """Count request-log entries dropped because the writer's queue was full."""
    _m().log_dropped.inc(n)


# -- scrape -------------------------------------------------------------------------------


class ClusterCollector(Collector):
    """Scrape-time gauges read from Redis for every registry backend and its queue."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("router_redis_up", "1 if this scrape could read Redis.")
        r = self.router
        pairs = [(b.name, b.queue) for b in r.registry.get().backends()]
        try:
            reading = read_cluster(r.redis, r.liveness, pairs)
        except redis.RedisError as exc:
            log.warning("metrics: Redis unreadable at scrape (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("router_queue_depth", "Jobs waiting.", labels=["queue"])
        live = GaugeMetricFamily("router_live_workers", "Live workers.", labels=["queue"])
        for queue, n in reading.queue_depth.items():
            depth.add_metric([queue], n)
            live.add_metric([queue], reading.live_workers.get(queue, 0))
        circuit = GaugeMetricFamily(
            "router_circuit_open", "1 while the backend's circuit is open.", labels=["backend"]
        )
        for backend in reading.circuits:
            circuit.add_metric([backend], 1 if reading.circuit_open(backend) else 0)
        yield from (depth, live, circuit)
        if reading.memory is not None:  # absent where Redis refuses INFO
            used = GaugeMetricFamily(
                "router_redis_memory_used_bytes", "Memory Redis uses (INFO used_memory)."
            )
            used.add_metric([], reading.memory.used)
            most = GaugeMetricFamily(
                "router_redis_memory_max_bytes",
                "Redis maxmemory: past it Redis refuses writes (0: no limit).",
            )
            most.add_metric([], reading.memory.limit)
            yield from (used, most)


class _Forward(Collector):
    """Serves another registry's metrics inside a per-scrape registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


def render(
    router: Router | None, multiproc_dir: str | None, accept: str | None = None
) -> tuple[bytes, str]:
    """The exposition and its content type (negotiated from the `accept` header: Prometheus
    text by default, OpenMetrics when asked): every process's samples from `multiproc_dir`
    when set, else this process's default registry; then the Redis gauges if `router`."""
    registry = CollectorRegistry(auto_describe=False)
    if multiproc_dir:
        MultiProcessCollector(registry, path=multiproc_dir)
    else:
        registry.register(_Forward(REGISTRY))
    if router is not None:
        registry.register(ClusterCollector(router))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def multiproc_dir(env: Mapping[str, str]) -> str | None:
    """PROMETHEUS_MULTIPROC_DIR (or its deprecated lower-case name), if set."""
    return env.get("PROMETHEUS_MULTIPROC_DIR") or env.get("prometheus_multiproc_dir") or None


def scrape_dir(env: Mapping[str, str]) -> str | None:
    """The directory a scrape reads: PROMETHEUS_MULTIPROC_DIR, but only if this process
    records into it. prometheus_client picks its value store when first imported, so a
    variable that appeared later (from a .env file) would make scrapes read an empty
    directory; then this process's own registry is served, with a warning."""
    path = multiproc_dir(env)
    if path and values.ValueClass.__name__ != "MmapedValue":  # the multiprocess store
        log.warning("metrics: PROMETHEUS_MULTIPROC_DIR was set after start; ignored")
        return None
    return path


def init_app(app: Flask, env: Mapping[str, str] | None = None) -> None:
    """Count every HTTP response by method, URL rule and status (idempotent), and make
    sure the multiprocess directory exists when one is configured."""
    if app.extensions.get("router_metrics"):
        return
    app.extensions["router_metrics"] = True
    path = multiproc_dir(os.environ if env is None else env)
    if path:
        os.makedirs(path, exist_ok=True)
    app.after_request(_count_response)


def _count_response(resp: Response) -> Response:
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    try:
        _m().http.labels(request.method, rule, str(resp.status_code)).inc()
    except OSError as exc:  # an unwritable multiprocess directory: serve, but say so
        log.warning("metrics: could not count a response (%s)", exc)
    return resp


# -- one completion -----------------------------------------------------------------------


class LogSink(Protocol):
    """Where finished completions go besides the metrics (the request-log writer)."""

    def submit(self, entry: LogEntry) -> bool: ...


class CompletionObserver:
    """Times one chat completion from its creation and records it exactly once, when it
    ends: `record_completion` and a request-log entry. It never fails the request."""

    def __init__(
        self,
        requested: str,
        *,
        request_id: str | None = None,
        sink: LogSink | None = None,
        key_name: str | None = None,
    ) -> None:
        self.requested, self.request_id, self.sink = requested, request_id, sink
        self.key_name = key_name
        self.t0 = time.monotonic()
        self.ttft: float | None = None
        self.sub: Submitted | None = None
        self.finished = False

    @classmethod
    def begin(cls, service: ChatService, model: object) -> CompletionObserver:
        """For a request in the current app: `model` as the registry names it, the request
        id, and the app's request-log writer (if any)."""
        route = service.router.registry.get().resolve(model) if isinstance(model, str) else None
        rid = g.get("request_id") if has_request_context() else None
        sink = current_app.extensions.get("requestlog")
        return cls(
            route.id if route else UNKNOWN, request_id=rid or current_request_id(), sink=sink
        )

    def start(
        self, service: ChatService, req: Any, headers: Any = None, client: Any = None
    ) -> Started:
        """`service.start(req, headers, client)`, observed: a failure before the first token
        is recorded and re-raised; the returned Started's events are watched."""
        try:
            started = service.start(req, headers=headers, client=client)
        except RouterError as exc:
            gone = exc.code == "job_cancelled"  # the client hung up, or cancelled it
            self.finish(CLIENT_GONE if gone else str(exc.status_code))
            raise
        except Exception:
            self.finish("500")  # recorded as a server error; the error handler renders it
            raise
        self.submitted(started.sub)
        for event in started.head:
            self._see(event)
        return Started(started.sub, started.head, self.events(started.rest))

    def submitted(self, sub: Submitted) -> None:
        """The job that answers (after any fallback)."""
        self.sub = sub

    def events(self, events: Iterable[StreamEvent | None]) -> Iterator[StreamEvent | None]:
        """Pass a job's events through, noting the first token and the end. A reader that
        stops before the end (client gone) is recorded as 499 when this is closed."""
        try:
            for event in events:
                if event is not None:
                    self._see(event)
                yield event
        except RouterError as exc:
            self.finish(str(exc.status_code))
            raise
        except Exception:
            self.finish("500")  # recorded as a server error, then propagated
            raise
        finally:
            self.finish(CLIENT_GONE)

    def _see(self, event: StreamEvent) -> None:
        if event.type is Event.TOKEN and self.ttft is None:
            self.ttft = time.monotonic() - self.t0
        elif event.type is Event.DONE:
            usage = event.usage
            self.finish(
                OK, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0
            )
        elif event.type is Event.ERROR:
            self.finish(str(event.error.status if event.error else 500))
        elif event.type is Event.CANCELLED:
            self.finish(CLIENT_GONE)

    def finish(self, status: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Record the completion with `status`; later calls do nothing."""
        if self.finished:
            return
        self.finished = True
        latency = time.monotonic() - self.t0
        sub = self.sub
        answered = sub.route.id if sub else None
        fallback = answered if answered and answered != self.requested else None
        backend = (sub.backend if sub else "") or NONE
        try:
            record_completion(
                self.requested,
                backend,
                status,
                latency,
                self.ttft,
                prompt_tokens,
                completion_tokens,
                fallback,
            )
            if self.sink is None:
                return
            cost = 0.0
            if sub is not None:
                route = sub.route
                cost = cost_usd(
                    prompt_tokens, completion_tokens, route.input_price, route.output_price
                )
            self.sink.submit(
                LogEntry(
                    time=time.time(),
                    request_id=self.request_id or "",
                    job_id=sub.job_id if sub else None,
                    key_name=self.key_name,
                    model=self.requested,
                    backend=backend,
                    status=status,
                    latency_ms=round(latency * 1000, 3),
                    ttft_ms=None if self.ttft is None else round(self.ttft * 1000, 3),
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    cost_usd=cost,
                    fallback=fallback,
                )
            )
        except Exception:
            # Observability must never fail a request: say so in the log and carry on.
            log.exception("could not record completion %s", sub.job_id if sub else "")
