"""The API's own description: `GET /openapi.json` (the OpenAPI 3.1 document, api/openapi.py)
and `GET /docs`, the same document as a plain web page rendered here: no script, nothing
fetched from elsewhere, so it reads the same on a machine with no internet."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app, render_template_string

from api import openapi
from api.http import json_response

bp = Blueprint("openapi", __name__)

_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ doc.info.title }} API</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem}
code,pre{font:13px ui-monospace,monospace}pre{background:#f4f4f6;padding:.6rem;overflow:auto}
.op{border-top:1px solid #ddd;padding:.4rem 0}.m{font-weight:700;text-transform:uppercase}
td{vertical-align:top;padding:.1rem .6rem .1rem 0}details{margin:.3rem 0}
</style></head><body>
{% macro content(part) %}{% for media, name in names(part) %}{{ media }}{% if name %}:
<a href="#{{ name }}">{{ name }}</a>{% endif %}{{ ", " if not loop.last }}{% endfor %}{% endmacro %}
<h1>{{ doc.info.title }} API <small>{{ doc.info.version }}</small></h1>
<p>{{ doc.info.description }} Machine-readable: <a href="openapi.json">/openapi.json</a>
(OpenAPI {{ doc.openapi }}).</p>
{% for tag in doc.tags %}{% set ops = by_tag.get(tag.name, []) %}{% if ops %}
<h2>{{ tag.name }}</h2><p>{{ tag.description }}</p>
{% for path, method, op in ops %}<div class="op" id="{{ op.operationId }}">
<p><span class="m">{{ "ws" if op.get("x-websocket") else method }}</span> <code>{{ path }}</code>
&mdash; {{ op.summary }}</p>
<details><summary>details</summary><pre>{{ op.description }}</pre>
{% if op.parameters %}<table>{% for p in op.parameters %}<tr><td><code>{{ p.name }}</code></td>
<td>{{ p["in"] }}</td><td>{{ p.description or "" }}</td></tr>{% endfor %}</table>{% endif %}
{% if op.requestBody %}<p>Body: {{ content(op.requestBody) }}</p>{% endif %}
<table>{% for status, r in op.responses.items() %}<tr><td>{{ status }}</td>
<td>{{ r.description }}</td><td>{{ content(r) }}</td></tr>{% endfor %}</table>
</details></div>{% endfor %}{% endif %}{% endfor %}
<h2>Schemas</h2>
{% for name, schema in doc.components.schemas.items() %}<details id="{{ name }}">
<summary><code>{{ name }}</code></summary><pre>{{ dumps(schema) }}</pre></details>{% endfor %}
</body></html>"""


def document() -> dict[str, Any]:
    """The app's document, built once: its routes do not change after create_app."""
    found: dict[str, Any] = current_app.extensions.get("openapi") or openapi.build(current_app)
    current_app.extensions["openapi"] = found
    return found


def _names(part: dict[str, Any]) -> list[tuple[str, str]]:
    """(media type, schema name or "") of each content entry of a request body or response."""
    return [
        (media, entry.get("schema", {}).get("$ref", "").rpartition("/")[2])
        for media, entry in (part.get("content") or {}).items()
    ]


@bp.get("/openapi.json")
def document_json() -> Response:
    """The OpenAPI 3.1 document of every route this API serves."""
    return json_response(document())


@bp.get("/docs")
def docs() -> Response:
    """The OpenAPI document as a web page: operations by tag, then every schema."""
    doc = document()
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            by_tag.setdefault(op["tags"][0], []).append((path, method, op))
    page = render_template_string(
        _PAGE, doc=doc, by_tag=by_tag, names=_names, dumps=lambda s: json.dumps(s, indent=2)
    )
    resp = Response(page, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = _CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp
