"""The web UI: a chat playground over `WS /v1/ws` at `GET /` and a live ops view at
`GET /ops`, both the same static page (`api/static/index.html`), plus its assets under
`/ui/`. Plain HTML, CSS and JS with no build step and nothing fetched from elsewhere, so
it works on a machine with no internet; the page itself talks only to this API.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, request, send_from_directory

bp = Blueprint("ui", __name__)

STATIC = Path(__file__).resolve().parent.parent / "static"
PAGE = "index.html"

# Everything the page loads or calls is this origin; `'self'` covers same-origin
# WebSockets in current browsers, the explicit ws/wss origins cover older ones.
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self' ws://{host} wss://{host}; frame-ancestors 'none'; base-uri 'none'"
)


def _page() -> Response:
    resp = send_from_directory(STATIC, PAGE, max_age=0)
    resp.headers["Content-Security-Policy"] = _CSP.format(host=request.host)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/")
def playground() -> Response:
    """The chat playground (the page opens on its Playground tab)."""
    return _page()


@bp.get("/ops")
def ops() -> Response:
    """The same page opened on its Ops tab: workers, backends and recent jobs."""
    return _page()


@bp.get("/ui/<path:name>")
def asset(name: str) -> Response:
    """The page's scripts and stylesheet; `send_from_directory` refuses paths outside
    `api/static` with 404."""
    resp = send_from_directory(STATIC, name, max_age=60)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp
