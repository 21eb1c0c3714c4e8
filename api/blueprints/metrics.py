"""`GET /metrics`: Prometheus text exposition of the API's counters and histograms (summed
over every gunicorn worker when PROMETHEUS_MULTIPROC_DIR is set) and of gauges read from
Redis at scrape time: queue depth, live workers, circuit state. Workers expose nothing of
their own; their state is in Redis. Open like most exporters: no key needed.
"""

from __future__ import annotations

import os

from flask import Blueprint, Response, request

from api.metrics import render, scrape_dir
from api.services import services

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    """Every metric, in the Prometheus text format (OpenMetrics if the scraper asks)."""
    body, content_type = render(services(), scrape_dir(os.environ), request.headers.get("Accept"))
    return Response(body, content_type=content_type)
