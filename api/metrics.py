"""Prometheus metrics of the API: what each chat completion did (counted once per completion
by api/accounting.py, through `record_completion`), and, at scrape time, what Redis says
about queues, workers and circuits.

    router_requests_total{model,backend,status}        counter  finished chat completions
    router_request_latency_seconds{model,backend}      histogram request start -> last event
    router_time_to_first_token_seconds{model,backend}  histogram request start -> first token
    router_prompt_tokens_total{model,backend}          counter
    router_completion_tokens_total{model,backend}      counter
    router_fallbacks_total{model,fallback}             counter  answered by another model
    router_key_requests_total{key,model,status}        counter  completions per API key
    router_key_tokens_total{key,type}                  counter  prompt / completion tokens per key
    router_key_spend_usd_total{key}                    counter  list-price cost per key
    router_http_requests_total{method,endpoint,status} counter  every HTTP response
    router_request_log_dropped_total                   counter  log entries dropped (queue full)
    router_queue_depth{queue}                          gauge    jobs accepted, not yet started
    router_live_workers{queue}                         gauge    workers with a live heartbeat
    router_circuit_open{backend}                       gauge    1 while the breaker is open
    router_redis_up                                    gauge    0: this scrape could not read Redis
    router_redis_memory_used_bytes                     gauge    Redis' used_memory (INFO memory)
    router_redis_memory_max_bytes                      gauge    Redis' maxmemory (0: no limit)

`model` is the model asked for (aliases resolved; `unknown` if it is not in the registry),
`backend` the backend of the job that answered or failed last (`none`: no job was made),
`status` the HTTP status as text (499: the client went away or cancelled), `key` the API
key's name (names only, never secrets: as many as the registry has keys; `admin` for the
admin key; requests without a key are not counted there). Workers expose
nothing: the gauges read their state from Redis.

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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import redis
from flask import Flask, Response, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from api.services import Services
from tasks.metrics import read_cluster

log = logging.getLogger(__name__)

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
    key_requests: Counter
    key_tokens: Counter
    key_spend: Counter


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
                    Counter(
                        "router_key_requests",
                        "Finished chat completions per API key.",
                        ("key", "model", "status"),
                    ),
                    Counter("router_key_tokens", "Tokens per API key.", ("key", "type")),
                    Counter("router_key_spend_usd", "List-price cost per API key, USD.", ("key",)),
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


def record_key_completion(
    key: str, model: str, status: str, prompt_tokens: int, completion_tokens: int, cost: float
) -> None:
    """Count one finished chat completion of the API key named `key`."""
    m = _m()
    m.key_requests.labels(key, model, status).inc()
    if prompt_tokens:
        m.key_tokens.labels(key, "prompt").inc(prompt_tokens)
    if completion_tokens:
        m.key_tokens.labels(key, "completion").inc(completion_tokens)
    if cost:
        m.key_spend.labels(key).inc(cost)


def record_log_drop(n: int = 1) -> None:
    """Count request-log entries dropped because the writer's queue was full."""
    _m().log_dropped.inc(n)


# -- scrape -------------------------------------------------------------------------------


class ClusterCollector(Collector):
    """Scrape-time gauges read from Redis for every registry backend and its queue."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("router_redis_up", "1 if this scrape could read Redis.")
        r = self.services
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
    services: Services | None, multiproc_dir: str | None, accept: str | None = None
) -> tuple[bytes, str]:
    """The exposition and its content type (negotiated from the `accept` header: Prometheus
    text by default, OpenMetrics when asked): every process's samples from `multiproc_dir`
    when set, else this process's default registry; then the Redis gauges if `services`."""
    registry = CollectorRegistry(auto_describe=False)
    if multiproc_dir:
        MultiProcessCollector(registry, path=multiproc_dir)
    else:
        registry.register(_Forward(REGISTRY))
    if services is not None:
        registry.register(ClusterCollector(services))
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
