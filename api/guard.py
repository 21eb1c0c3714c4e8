"""Checks every request passes before its route: what keeps a web page from driving the router.

A page on any site can make its visitor's browser send requests to `127.0.0.1:8000`. Three
checks tell such a request apart from the router's own web UI and from non-browser clients:

- `Host` must be one of ALLOWED_HOSTS (DNS rebinding: a name the attacker controls that
  resolves to 127.0.0.1 makes the browser treat the router as the attacker's own origin).
- `Origin`, when a browser sends one, must be the router's own origin (the Host it is reached
  at, over http or https) or one of ALLOWED_ORIGINS, on every WebSocket handshake and every
  state-changing request (browsers do not apply CORS to WebSockets).
- A POST must say `Content-Type: application/json`: a `text/plain` or form POST is the
  kind another site may send without a CORS preflight.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, request

from workers.errors import InvalidRequestError, PermissionDeniedError

#: The names a loopback-bound API answers to by default, any port.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
ANY = "*"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PORT = re.compile(r"[0-9]{0,5}")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


class UnsupportedMediaTypeError(InvalidRequestError):
    """415: a POST whose body is not declared as JSON."""

    status_code = 415
    code = "unsupported_media_type"


def comma_list(value: object) -> tuple[str, ...]:
    """A setting given as `a, b,c` (environment) or as a list (the mapping passed to
    create_app), lower-cased, blanks dropped."""
    if value is None:
        return ()
    items: Iterable[object]
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, Iterable):
        items = value
    else:
        items = (value,)
    return tuple(s for s in (str(i).strip().lower() for i in items) if s)


def is_loopback(address: str) -> bool:
    """Whether a bind address is this machine only: `localhost`, 127.0.0.0/8 or ::1."""
    name = address.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def allowed_hosts(config: Mapping[str, Any]) -> tuple[str, ...]:
    """ALLOWED_HOSTS when set; otherwise the loopback names when the API binds to loopback
    (HOST), and any name when it binds elsewhere (the operator chose to serve a network)."""
    given = comma_list(config.get("ALLOWED_HOSTS"))
    if given:
        return given
    return LOOPBACK_HOSTS if is_loopback(str(config.get("HOST") or "")) else (ANY,)


def host_name(host: str) -> str:
    """The name of a `Host` value: no port, lower-cased, IPv6 kept in brackets, no final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    name, sep, port = host.rpartition(":")
    if sep and _PORT.fullmatch(port):
        host = name
    return host.rstrip(".")


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """`host` (a Host header) matches an entry: the same name, `*`, or `.example.com` for
    that domain and its subdomains."""
    name = host_name(host)
    for entry in allowed:
        if entry in (ANY, name):
            return True
        if entry.startswith(".") and (name == entry[1:] or name.endswith(entry)):
            return True
    return False


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` as browsers send it in `Origin` (default port dropped,
    lower-cased); None for anything but an http(s) origin (`null`, `file://`, garbage)."""
    try:
        parts = urlsplit(url.strip().lower())
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc or "@" in parts.netloc:
        return None
    netloc = parts.netloc.removesuffix(_DEFAULT_PORTS[parts.scheme])
    return f"{parts.scheme}://{netloc}"


def origin_allowed(origin: str, host: str, extra: Iterable[str]) -> bool:
    """The router's own origins (the Host it was reached at, http or https) and ALLOWED_ORIGINS
    (`*`: any)."""
    given = origin_of(origin)
    if given is None:
        return False
    own = {origin_of(f"{scheme}://{host}") for scheme in _DEFAULT_PORTS}
    if given in own:
        return True
    listed = tuple(extra)
    return ANY in listed or given in {origin_of(o) for o in listed}


def _is_websocket_handshake() -> bool:
    return request.headers.get("Upgrade", "").strip().lower() == "websocket"


def check_request(hosts: tuple[str, ...], origins: tuple[str, ...]) -> None:
    """Host, then Origin, then Content-Type; each refusal is an OpenAI-shaped error.
    `hosts`: allowed_hosts() of the app's config; `origins`: its ALLOWED_ORIGINS."""
    host = request.host
    if not host_allowed(host, hosts):
        raise InvalidRequestError(
            "This server does not answer to that Host. Set ROUTER_ALLOWED_HOSTS to the names "
            "clients use to reach it.",
            param="Host",
            code="invalid_host",
        )
    origin = request.headers.get("Origin")
    checked = _is_websocket_handshake() or request.method in UNSAFE_METHODS
    if origin is not None and checked and not origin_allowed(origin, host, origins):
        raise PermissionDeniedError(
            "Requests from this Origin are not allowed. Set ROUTER_ALLOWED_ORIGINS to let "
            "another site's pages use this API.",
            param="Origin",
            code="origin_not_allowed",
        )
    if (
        request.method == "POST"
        and request.routing_exception is None
        and request.mimetype != "application/json"
    ):
        raise UnsupportedMediaTypeError(
            "Send the request body as JSON with `Content-Type: application/json`.",
            param="Content-Type",
        )


def init_app(app: Flask) -> None:
    """Run the checks before every route (and before a 404 for an unknown path), with the
    allowlists read from the config once."""
    hosts = allowed_hosts(app.config)
    origins = comma_list(app.config.get("ALLOWED_ORIGINS"))
    app.before_request(lambda: check_request(hosts, origins))
