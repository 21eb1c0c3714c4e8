"""Who is calling: the API key of every /v1 request, checked before its route runs.

Whether a key is needed (ROUTER_AUTH): `auto` needs one as soon as any key exists in the
registry (`irouter keys create`), or whenever the API binds beyond loopback; `required`
always; `off` never. A loopback `make run` with no key stays open, as a personal router
should; a router reachable from a network is never open by accident: create_app refuses to
start there with neither a key nor an admin key unless ROUTER_AUTH=off says so.

The key goes in `Authorization: Bearer sk-ir-...`. A browser cannot set headers on a
WebSocket, so the WebSockets also take it as a subprotocol (offer `irouter` and
`irouter-key.<key>`; the server selects `irouter`) or in a first message
`{"type": "auth", "key": ...}`; never in the URL, which proxies and logs keep.

ROUTER_ADMIN_KEY is also accepted on /v1, as the caller `admin`: every model, no limit.

Keys come from the registry snapshot (a dict by SHA-256, reloaded at most every
REGISTRY_TTL seconds), so a request costs a hash and a lookup, never a database read, and a
revoked key stops working within REGISTRY_TTL. The caller is `g.caller`; `current_caller()`
reads it anywhere on the request path.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from flask import Flask, g, has_request_context, request

from api.guard import is_loopback
from registry.apikeys import ADMIN, KeyInfo, hash_secret
from registry.queries import Snapshot
from tasks.jobs import ANONYMOUS
from workers.errors import AuthenticationError

#: The subprotocol a WebSocket client offers beside `irouter-key.<key>`; the server selects it.
WS_PROTOCOL = "irouter"
WS_KEY_PROTOCOL = "irouter-key."
FIRST_MESSAGE_WAIT = 10.0  # seconds a WebSocket may take to send its key as a first message


class AuthMode(StrEnum):
    AUTO = "auto"
    REQUIRED = "required"
    OFF = "off"


class InvalidApiKey(AuthenticationError):
    """401 as OpenAI words it: type invalid_request_error, code invalid_api_key."""

    type = "invalid_request_error"
    code = "invalid_api_key"


@dataclass(frozen=True)
class Caller:
    """Whoever a request is from: an API key, the admin key, or anyone (auth off). `name`
    is its tenant: the key's name, `admin`, or `-`."""

    name: str
    key: KeyInfo | None = None

    def allows(self, model_id: str) -> bool:
        return self.key is None or self.key.allows(model_id)

    @property
    def max_parallel(self) -> int:
        return (self.key.max_parallel or 0) if self.key else 0

    @property
    def key_name(self) -> str | None:
        """The name the request log and metrics know this caller by (None: no key)."""
        return None if self.name == ANONYMOUS else self.name

    def owns(self, tenant: str) -> bool:
        """Whether this caller may see a job of `tenant`: its own; every job for the admin
        key, and for anyone when auth is off."""
        return self.key is None or tenant == self.name


ANYONE = Caller(ANONYMOUS)
ADMIN_CALLER = Caller(ADMIN)
#: Set on a WebSocket handshake that brought no key: the socket's first message must.
PENDING = Caller("")


def bearer(header: str | None) -> str | None:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def offered_key(protocols: str | None) -> str | None:
    """The key among a WebSocket handshake's offered subprotocols, if any."""
    for name in (protocols or "").split(","):
        name = name.strip()
        if name.startswith(WS_KEY_PROTOCOL):
            return name.removeprefix(WS_KEY_PROTOCOL)
    return None


class Gate:
    """Decides whether a request needs a key, and whose a key is."""

    def __init__(
        self, mode: AuthMode, admin_key: str | None, host: str, snapshot: Callable[[], Snapshot]
    ) -> None:
        self.mode, self.admin_key, self.snapshot = mode, admin_key, snapshot
        self.exposed = not is_loopback(host)

    def required(self) -> bool:
        if self.mode is AuthMode.AUTO:
            return self.exposed or self.snapshot().has_keys
        return self.mode is AuthMode.REQUIRED

    def caller(self, secret: str | None) -> Caller:
        """The caller a key stands for; 401 for none, an unknown, revoked or expired one."""
        if not secret:
            raise InvalidApiKey(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`; "
                "an operator creates one with `irouter keys create NAME`."
            )
        if self.admin_key and hmac.compare_digest(secret.encode(), self.admin_key.encode()):
            return ADMIN_CALLER
        key = self.snapshot().key(hash_secret(secret))
        if key is None or not key.usable(time.time()):
            raise InvalidApiKey("Incorrect API key provided, or the key was revoked or expired.")
        return Caller(key.name, key)

    def renewed(self, caller: Caller) -> Caller:
        """The caller as the registry has it now: a long-lived WebSocket asks before each
        request, so a key revoked, expired or changed meanwhile takes effect there too."""
        if caller.key is None:
            return caller
        key = self.snapshot().key(caller.key.secret_hash)
        if key is None or not key.usable(time.time()):
            raise InvalidApiKey("The API key of this socket was revoked or has expired.")
        return Caller(key.name, key)

    def check(self) -> None:
        """Before every /v1 route: set g.caller, or refuse with 401."""
        if not self.required():
            g.caller = ANYONE
            return
        secret = bearer(request.headers.get("Authorization"))
        if secret is None and _is_websocket():
            secret = offered_key(request.headers.get("Sec-WebSocket-Protocol"))
            if secret is None:
                g.caller = PENDING  # the socket's first message must bring the key
                return
        g.caller = self.caller(secret)


def _is_websocket() -> bool:
    """Whether the request is a WebSocket handshake on a WebSocket route: routing matched a
    websocket rule (werkzeug matches one only for `Upgrade: websocket` with `Connection:
    upgrade`). Never the Upgrade header alone: any HTTP route would then run keyless."""
    rule = request.url_rule
    return rule is not None and bool(rule.websocket)


def current_caller() -> Caller:
    """The caller of the current request (anyone outside a request). A WebSocket whose
    handshake brought no key has none until socket_caller reads its first message: never
    anyone's rights before that."""
    if not has_request_context():
        return ANYONE
    found: Caller = g.get("caller") or ANYONE
    if found is PENDING:
        raise InvalidApiKey("Authenticate before sending requests on this socket.")
    return found


def socket_caller(ws: Any, gate: Gate) -> Caller:
    """The caller of a WebSocket: settled at the handshake, or by its first message, which
    must then be {"type": "auth", "key": ...}; anything else is refused with 401."""
    caller: Caller = g.get("caller") or ANYONE
    if caller is not PENDING:
        return caller
    raw = ws.receive(timeout=FIRST_MESSAGE_WAIT)
    try:
        body = orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or body.get("type") != "auth":
        raise InvalidApiKey(
            'Authenticate first: send {"type": "auth", "key": "<key>"}, an Authorization '
            "header, or the subprotocols `irouter` and `irouter-key.<key>`."
        )
    key = body.get("key")
    g.caller = gate.caller(key if isinstance(key, str) else None)
    return g.caller


def check_startup(mode: AuthMode, host: str, admin_key: str | None, has_keys: bool) -> None:
    """Refuse to serve a network with nobody able to authenticate, unless auth is off."""
    if mode is AuthMode.OFF or is_loopback(host) or has_keys or admin_key:
        return
    raise ValueError(
        f"The API binds {host}, beyond loopback, and no API key exists: create one with "
        "`irouter keys create NAME` (or set ROUTER_ADMIN_KEY), or set ROUTER_AUTH=off to "
        "serve without keys."
    )


def auth_mode(value: object) -> AuthMode:
    try:
        return AuthMode(str(value).strip().lower())
    except ValueError:
        modes = ", ".join(m.value for m in AuthMode)
        raise ValueError(f"ROUTER_AUTH must be one of {modes}; got {value!r}") from None


def init_app(app: Flask, snapshot: Callable[[], Snapshot]) -> Gate:
    """Check the key of every /v1 request before its route (after the guard's checks);
    refuse to start beyond loopback with nobody able to authenticate."""
    mode = auth_mode(app.config["AUTH"])
    host, admin_key = str(app.config.get("HOST") or ""), app.config.get("ADMIN_KEY") or None
    check_startup(mode, host, admin_key, snapshot().has_keys)
    gate = Gate(mode, admin_key, host, snapshot)
    app.extensions["auth"] = gate

    def check() -> None:
        if request.path.startswith("/v1/") and request.routing_exception is None:
            gate.check()

    app.before_request(check)
    return gate
