"""What keeps a web page from driving the router, in process against the session's Redis:
the Host allowlist (DNS rebinding), Origin on WebSocket handshakes and state-changing
requests, JSON-only POSTs, /admin behind a proxy, and the admin key read as written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

WS_HANDSHAKE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}
BODY = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


def error_of(resp: Any, status: int) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.fixture
def make_app(stack: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """create_app on the session's Redis and registry, with no ROUTER_* variable but the
    ones a test sets."""
    from api import create_app

    for name in ("ADMIN_KEY", "HOST", "ALLOWED_HOSTS", "ALLOWED_ORIGINS"):
        monkeypatch.delenv(f"ROUTER_{name}", raising=False)

    def make(**config: Any) -> Any:
        base = {"REDIS_URL": stack.redis_url, "DATABASE_URL": stack.db_url, "TESTING": True}
        return create_app({**base, "WORKER_WAIT": 0.2, **config})

    return make


@pytest.fixture
def local(make_app: Callable[..., Any]) -> Any:
    """A client of an API bound to loopback, as `make run` starts it."""
    return make_app().test_client()


# -- Host: DNS rebinding ----------------------------------------------------------------------


def test_a_foreign_host_is_refused_on_every_path(local: Any) -> None:
    for path in ("/v1/models", "/admin/workers", "/healthz", "/", "/no-such-path"):
        err = error_of(local.get(path, headers={"Host": "attacker.example:8000"}), 400)
        assert (err["code"], err["param"], err["type"]) == (
            "invalid_host",
            "Host",
            "invalid_request_error",
        )
    err = error_of(local.post("/v1/jobs", json=BODY, headers={"Host": "attacker.example"}), 400)
    assert err["code"] == "invalid_host"


def test_the_loopback_names_are_served_on_any_port(local: Any) -> None:
    for host in ("localhost", "localhost:8000", "127.0.0.1:1234", "[::1]:8000", "LOCALHOST"):
        assert local.get("/healthz", headers={"Host": host}).status_code == 200, host
    for host in ("localhost.attacker.example", "127.0.0.1.nip.io", "[::2]:8000", "0.0.0.0"):
        assert local.get("/healthz", headers={"Host": host}).status_code == 400, host


def test_allowed_hosts_replaces_the_default(make_app: Callable[..., Any]) -> None:
    client = make_app(ALLOWED_HOSTS="router.example.com, .corp.example").test_client()
    for host in ("router.example.com", "router.example.com:443", "a.corp.example", "corp.example"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    for host in ("evilcorp.example", "localhost", "example.com"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 400, host
    anyone = make_app(ALLOWED_HOSTS="*").test_client()
    assert anyone.get("/healthz", headers={"Host": "attacker.example"}).status_code == 200


def test_an_api_bound_beyond_loopback_answers_any_name_unless_told(
    make_app: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_HOST", "0.0.0.0")
    monkeypatch.setenv("ROUTER_AUTH", "off")  # beyond loopback it would not start without keys
    served = make_app().test_client()
    assert served.get("/healthz", headers={"Host": "router.lan:8000"}).status_code == 200
    monkeypatch.setenv("ROUTER_ALLOWED_HOSTS", "router.lan")
    narrowed = make_app().test_client()
    assert narrowed.get("/healthz", headers={"Host": "router.lan:8000"}).status_code == 200
    assert narrowed.get("/healthz", headers={"Host": "attacker.example"}).status_code == 400
    monkeypatch.setenv("ROUTER_HOST", "::1")
    monkeypatch.delenv("ROUTER_ALLOWED_HOSTS")
    assert make_app().test_client().get("/", headers={"Host": "router.lan"}).status_code == 400


# -- Origin: cross-site WebSockets and requests -----------------------------------------------


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "null", "http://localhost.evil.example", "http://localhost:8001"],
)
def test_a_websocket_handshake_from_another_origin_is_refused(local: Any, origin: str) -> None:
    for path in ("/v1/ws", "/v1/jobs/job_0123456789abcdef01234567/ws"):
        err = error_of(local.get(path, headers={**WS_HANDSHAKE, "Origin": origin}), 403)
        assert (err["code"], err["param"]) == ("origin_not_allowed", "Origin")


def test_state_changing_requests_from_another_origin_are_refused(local: Any) -> None:
    evil = {"Origin": "http://evil.example"}
    error_of(local.post("/v1/jobs", json=BODY, headers=evil), 403)
    error_of(local.post("/v1/chat/completions", json=BODY, headers=evil), 403)
    error_of(local.delete("/v1/jobs/job_0123456789abcdef01234567", headers=evil), 403)
    assert local.get("/v1/models", headers=evil).status_code == 200  # a read changes nothing
    own = {"Origin": "http://localhost"}  # the test client's Host
    error_of(local.delete("/v1/jobs/job_0123456789abcdef01234567", headers=own), 404)


def test_allowed_origins_adds_to_the_routers_own(make_app: Callable[..., Any]) -> None:
    client = make_app(ALLOWED_ORIGINS="https://chat.example.com").test_client()
    path = "/v1/jobs/job_0123456789abcdef01234567"
    for origin in ("https://chat.example.com", "https://chat.example.com:443", "https://localhost"):
        assert client.delete(path, headers={"Origin": origin}).status_code == 404, origin
    assert client.delete(path, headers={"Origin": "http://chat.example.com"}).status_code == 403
    anyone = make_app(ALLOWED_ORIGINS="*").test_client()
    assert anyone.delete(path, headers={"Origin": "http://evil.example"}).status_code == 404


# -- Content-Type: a POST without a preflight -------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", None],
)
def test_a_post_that_does_not_say_json_is_415(local: Any, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    for path in ("/v1/jobs", "/v1/chat/completions"):
        resp = local.post(path, data=orjson.dumps({}), headers=headers)
        err = error_of(resp, 415)
        assert (err["code"], err["param"]) == ("unsupported_media_type", "Content-Type")
        assert "application/json" in err["message"]


def test_json_with_a_charset_passes_the_check(local: Any) -> None:
    headers = {"Content-Type": "application/json; charset=utf-8"}
    err = error_of(local.post("/v1/chat/completions", data=b"{}", headers=headers), 400)
    assert err["code"] != "unsupported_media_type"  # validated as usual: the body got through
    assert local.post("/no-such-path", data=b"x", content_type="text/plain").status_code == 404


# -- /admin without a key, behind a proxy -----------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9;proto=https"},
        {"X-Real-IP": "203.0.113.9"},
    ],
)
def test_admin_without_a_key_refuses_what_a_proxy_forwarded(local: Any, header: dict) -> None:
    assert local.get("/admin/workers").status_code == 200  # loopback, not proxied
    err = error_of(local.get("/admin/workers", headers=header), 403)
    assert err["type"] == "permission_error" and "ROUTER_ADMIN_KEY" in err["message"]


def test_admin_with_a_key_needs_only_the_key_behind_a_proxy(make_app: Callable[..., Any]) -> None:
    key = "k" * 24
    client = make_app(ADMIN_KEY=key).test_client()
    proxied = {"X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer {key}"}
    assert client.get("/admin/workers", headers=proxied).status_code == 200


# -- ROUTER_ADMIN_KEY as written --------------------------------------------------------------


@pytest.mark.parametrize("raw", ["0", "false", "null", "s3cret", "fifteen-chars!!"])
def test_a_short_admin_key_stops_the_app_from_starting(
    make_app: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("ROUTER_ADMIN_KEY", raw)
    with pytest.raises(ValueError, match=r"ROUTER_ADMIN_KEY must be .* at least 16 characters"):
        make_app()


@pytest.mark.parametrize("raw", ["0.00000000000000", '"quoted-admin-key"', "1e400000000000000"])
def test_the_admin_key_is_the_variable_as_written(
    make_app: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    """Values JSON would decode (to 0, to the text inside the quotes, to infinity) stay keys."""
    monkeypatch.setenv("ROUTER_ADMIN_KEY", raw)
    client = make_app().test_client()
    error_of(client.get("/admin/workers"), 401)  # loopback alone is not enough with a key
    ok = client.get("/admin/workers", headers={"Authorization": f"Bearer {raw}"})
    assert ok.status_code == 200


def test_an_empty_admin_key_is_unset_and_the_mapping_wins(
    make_app: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_ADMIN_KEY", "")  # what compose passes for a blank .env entry
    app = make_app()
    assert app.config["ADMIN_KEY"] is None
    assert app.test_client().get("/admin/workers").status_code == 200
    monkeypatch.setenv("ROUTER_ADMIN_KEY", "from-the-environment-01")
    assert make_app().config["ADMIN_KEY"] == "from-the-environment-01"
    assert make_app(ADMIN_KEY="from-the-mapping-000001").config["ADMIN_KEY"] == (
        "from-the-mapping-000001"
    )


# -- WebSocket limits -------------------------------------------------------------------------


def test_websocket_messages_are_capped_like_bodies_and_pinged(make_app: Callable[..., Any]) -> None:
    from api.blueprints.ws import server_options

    app = make_app()
    options = app.config["SOCK_SERVER_OPTIONS"]
    assert options["max_message_size"] == app.config["MAX_CONTENT_LENGTH"] > 0
    assert options["ping_interval"] == app.config["KEEPALIVE"] > 0
    assert app.config["WS_IDLE_TIMEOUT"] > 0
    given = {**app.config, "MAX_CONTENT_LENGTH": 4096, "SOCK_SERVER_OPTIONS": {"ping_interval": 3}}
    assert server_options(given) == {
        "max_message_size": 4096,
        "ping_interval": 3,
        "subprotocols": ["irouter"],  # selected when a browser offers its key beside it
    }
