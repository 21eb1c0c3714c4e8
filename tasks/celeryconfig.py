"""Celery settings, loaded when the app is first configured (not at import of `tasks`).

Late acks, reject on worker lost, prefetch 1 and time limits per task; kombu's
ack emulation (and with it the visibility timeout) is off, because the job index and the
reaper redeliver faster (see below and docs/architecture.md). Connection limits sized for
gevent workers with a thousand jobs in flight (docs/benchmarks.md: kombu's default
of 10 fails under load).
"""

from __future__ import annotations

import os
import sys

from dotenv import load_dotenv

from core.settings import Settings
from tasks.pools import DEFAULT_CONCURRENCY, pool_for_argv

load_dotenv(override=False)
_settings = Settings.load(os.environ)

broker_url = _settings.redis_url
broker_connection_retry_on_startup = True
broker_transport_options = {
    # kombu's ack emulation keeps every delivery in an "unacked" hash and index (a MULTI
    # on delivery and another on ack: 14% of a worker's CPU, docs/benchmarks.md)
    # and restores it only after a visibility timeout. Our own bookkeeping is faster and
    # already covers each case: a claimed job of a dead worker is requeued by the reaper
    # within ~3 heartbeats; a delivered but unclaimed one stays `queued` in the job index
    # and is published again after ROUTER_REDELIVER_AFTER; claims are idempotent. A warm
    # shutdown still puts reserved messages back (kombu's in-memory QoS does that).
    "ack_emulation": False,
    "max_connections": 2000,
    "socket_keepalive": True,
    "socket_connect_timeout": 2,
}
broker_pool_limit = 100

task_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
result_backend = None

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_soft_time_limit = int(_settings.request_timeout) + 30
task_time_limit = int(_settings.request_timeout) + 60

# threads for the bare local command; provider-only workers re-exec with -P gevent (pools.py)
worker_pool = "threads"
_by_pool = DEFAULT_CONCURRENCY.get(pool_for_argv(sys.argv), 4)
worker_concurrency = _settings.worker_concurrency or _by_pool
worker_hijack_root_logger = True
worker_send_task_events = _settings.task_events
task_send_sent_event = _settings.task_events
