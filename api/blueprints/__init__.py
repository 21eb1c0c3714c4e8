"""HTTP surface, one blueprint per area, each registered by create_app (api/__init__.py).
What each serves:

    openai.py   /v1/chat/completions, /v1/models
    jobs.py     /v1/jobs: submit, read, cancel, follow (/events)
    ws.py       /v1/ws and /v1/jobs/<id>/ws: completions and jobs over a WebSocket
    admin.py    /admin: models, backends with their health, workers
    health.py   /healthz, /readyz
    metrics.py  /metrics for Prometheus
    ui.py       the playground (/), the operations page (/ops) and their files (/ui/)
    openapi.py  /openapi.json and /docs
"""
