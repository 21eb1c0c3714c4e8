"""`/admin/keys`, in process: each app on its own registry file (keys in the session's
registry would change how every other test's requests are authenticated) and the session's
Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from registry import make_engine
from registry.apikeys import SECRET_PREFIX, hash_secret, period_key
from registry.requestlog import DAY, write_entries
from tasks import keys as redis_keys
from tests.registry.test_keys_cli import entry

ADMIN_KEY = "admin-key-for-these-tests-0123"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def error_of(resp: Any, status: int) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'router.db'}"


@pytest.fixture
def make_app(
    stack: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Any]]:
    """create_app on a fresh registry file and the session's Redis, with no ROUTER_*
    variable of the environment's that these routes read. Each app's heartbeat thread
    stops with the test, not when Redis goes away at the end of the session."""
    from api import create_app

    for name in ("ADMIN_KEY", "HOST", "ALLOWED_HOSTS", "ALLOWED_ORIGINS"):
        monkeypatch.delenv(f"ROUTER_{name}", raising=False)
    made: list[Any] = []

    def make(**config: Any) -> Any:
        base = {"REDIS_URL": stack.redis_url, "DATABASE_URL": db_url, "TESTING": True}
        made.append(create_app({**base, "WORKER_WAIT": 0.2, **config}))
        return made[-1]

    yield make
    for app in made:
        app.extensions["services"].presence.goodbye()


@pytest.fixture
def admin(make_app: Callable[..., Any]) -> Any:
    """A client of an app with ROUTER_ADMIN_KEY set, sending it."""
    client = make_app(ADMIN_KEY=ADMIN_KEY).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = AUTH["Authorization"]
    return client


@pytest.fixture
def name() -> str:
    """A key name of this test alone: the session's Redis outlives it."""
    return f"team-{uuid.uuid4().hex[:8]}"


def create(client: Any, **body: Any) -> dict[str, Any]:
    resp = client.post("/admin/keys", json=body)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    data: dict[str, Any] = resp.get_json()
    return data


ROUTES = [
    ("get", "/admin/keys"),
    ("post", "/admin/keys"),
    ("get", "/admin/keys/someone"),
    ("post", "/admin/keys/someone/revoke"),
    ("post", "/admin/keys/someone/rotate"),
    ("get", "/admin/keys/someone/usage"),
]


# -- the admin guard ------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_the_admin_key_when_one_is_set(
    make_app: Callable[..., Any], method: str, path: str
) -> None:
    client = make_app(ADMIN_KEY=ADMIN_KEY).test_client()
    call = getattr(client, method)
    body = {"json": {"name": "someone"}} if method == "post" else {}
    err = error_of(call(path, **body), 401)
    assert err["code"] == "invalid_admin_key"
    wrong = {"Authorization": "Bearer " + "x" * len(ADMIN_KEY)}
    assert error_of(call(path, headers=wrong, **body), 401)["code"] == "invalid_admin_key"
    assert client.get("/admin/keys", headers=AUTH).get_json()["data"] == []  # nothing made


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_without_an_admin_key_only_unproxied_local_clients_get_in(
    make_app: Callable[..., Any], method: str, path: str
) -> None:
    client = make_app().test_client()
    call = getattr(client, method)
    body = {"json": {"name": "someone"}} if method == "post" else {}
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    assert error_of(call(path, headers=proxied, **body), 403)["type"] == "permission_error"
    remote = {"REMOTE_ADDR": "192.0.2.7"}
    assert error_of(call(path, environ_base=remote, **body), 403)["type"] == "permission_error"
    assert call(path, **body).status_code not in (401, 403)  # loopback: let in


# -- create, list, get, revoke, rotate ------------------------------------------------------


def test_create_answers_the_secret_once(admin: Any, db_url: str, name: str) -> None:
    data = create(
        admin,
        name=name,
        models=["m2", "m1"],
        rpm=60,
        tpm=1000,
        max_parallel=2,
        budget_usd=3.5,
        budget_period="week",
        expires="2999-12-31",
    )
    secret = data["key"]
    assert secret.startswith(SECRET_PREFIX) and len(secret) == len(SECRET_PREFIX) + 43
    assert data["name"] == name and data["status"] == "active"
    assert data["models"] == ["m1", "m2"]
    assert (data["rpm"], data["tpm"], data["max_parallel"]) == (60, 1000, 2)
    assert (data["budget_usd"], data["budget_period"]) == (3.5, "week")
    assert data["expires_at"] == 32503680000.0  # 3000-01-01T00:00Z: the end of the day given

    listed = admin.get("/admin/keys")
    assert listed.status_code == 200 and secret.encode() not in listed.get_data()
    body = listed.get_json()
    assert body["object"] == "list"
    assert body["data"] == [{**data, "key": secret[:10] + "…"}]
    one = admin.get(f"/admin/keys/{name}")
    assert one.get_json() == {**data, "key": secret[:10] + "…"}
    assert secret.encode() not in one.get_data()

    engine = make_engine(db_url)
    with engine.connect() as conn:
        (row,) = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM api_key"))]
    engine.dispose()
    assert row["secret_hash"] == hash_secret(secret)
    assert not any(secret in str(value) for value in row.values())


def test_create_with_a_name_only(admin: Any, name: str) -> None:
    data = create(admin, name=name)
    assert data["models"] == [] and data["budget_period"] == "month"
    assert (data["rpm"], data["budget_usd"], data["expires_at"]) == (None, None, None)


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"rpm": 0}, None, "rpm must be a positive integer, got 0"),
        ({"tpm": "many"}, None, "tpm must be a positive integer, got 'many'"),
        ({"max_parallel": True}, None, "max_parallel must be a positive integer, got True"),
        ({"budget_usd": -1}, None, "budget must be a finite number >= 0 (USD), got -1"),
        ({"budget_period": "year"}, None, "budget period must be one of day, week, month, total"),
        ({"budget_period": 7}, "budget_period", "`budget_period` must be a string."),
        ({"expires": "tomorrow"}, None, "expiry must be a date as YYYY-MM-DD, got 'tomorrow'"),
        ({"models": "m1"}, "models", "`models` must be a list of model ids"),
        ({"models": [1]}, "models", "`models` must be a list of model ids"),
        ({"rate": 5}, "rate", "Unknown field `rate`"),
        ({"name": None}, "name", "`name` is required."),
        ({"name": 5}, "name", "`name` must be a string."),
        ({"name": "admin"}, None, "'admin' is the admin key's name"),
        ({"name": "has space"}, None, "a key name is 1-64 letters"),
    ],
)
def test_bad_values_are_400(
    admin: Any, name: str, body: dict[str, Any], param: str | None, message: str
) -> None:
    err = error_of(admin.post("/admin/keys", json={"name": name, **body}), 400)
    assert err["type"] == "invalid_request_error"
    assert err["message"].startswith(message) and err["param"] == param
    assert admin.get("/admin/keys").get_json()["data"] == []


@pytest.mark.parametrize("raw", [b"[]", b'"name"', b"{not json"])
def test_a_body_that_is_not_an_object_is_400(admin: Any, raw: bytes) -> None:
    resp = admin.post("/admin/keys", data=raw, content_type="application/json")
    assert error_of(resp, 400)["type"] == "invalid_request_error"


def test_a_taken_name_is_409(admin: Any, name: str) -> None:
    create(admin, name=name)
    err = error_of(admin.post("/admin/keys", json={"name": name}), 409)
    assert (err["code"], err["param"]) == ("key_exists", "name")
    assert err["message"] == f"key {name!r} already exists"


@pytest.mark.parametrize(("method", "path"), ROUTES[2:])
def test_an_unknown_key_is_404(admin: Any, method: str, path: str) -> None:
    err = error_of(getattr(admin, method)(path, json={}), 404)
    assert (err["code"], err["type"]) == ("key_not_found", "invalid_request_error")
    assert err["message"] == "no key named 'someone'"


def test_revoke_then_rotate(admin: Any, db_url: str, name: str) -> None:
    first = create(admin, name=name, rpm=9)
    revoked = admin.post(f"/admin/keys/{name}/revoke", json={})
    assert revoked.status_code == 200
    data = revoked.get_json()
    assert data["status"] == "revoked" and data["revoked_at"] == pytest.approx(time.time(), abs=60)
    assert data["key"] == first["key"][:10] + "…"
    assert admin.get("/admin/keys").get_json()["data"][0]["status"] == "revoked"

    rotated = admin.post(f"/admin/keys/{name}/rotate", json={})
    assert rotated.status_code == 200
    second = rotated.get_json()
    assert second["key"].startswith(SECRET_PREFIX) and second["key"] != first["key"]
    assert (second["status"], second["revoked_at"], second["rpm"]) == ("active", None, 9)
    listed = admin.get("/admin/keys")
    assert second["key"].encode() not in listed.get_data()
    assert listed.get_json()["data"][0]["key"] == second["key"][:10] + "…"

    engine = make_engine(db_url)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT secret_hash FROM api_key")).scalar_one()
    engine.dispose()
    assert stored == hash_secret(second["key"]) != hash_secret(first["key"])


# -- usage ----------------------------------------------------------------------------------


def test_usage(admin: Any, db_url: str, name: str, stack: Any) -> None:
    create(admin, name=name, budget_usd=10, budget_period="month")
    midnight = time.time() // DAY * DAY
    today, yesterday = midnight + 1, midnight - 3600
    engine = make_engine(db_url)
    write_entries(
        engine,
        [
            entry(name, "m1", today, 10, 5, 0.25),
            entry(name, "m2", today, 20, 10, 0.5),
            entry(name, "m1", yesterday, 1, 2, 0.125),
            entry(name, "m1", time.time() - 40 * DAY, 1000, 1000, 100.0),
            entry("someone-else", "m1", today, 7, 7, 7.0),
        ],
    )
    engine.dispose()
    current = period_key("month", time.time())
    spend_key = redis_keys.spend_key(name, current)
    stack.redis().hset(spend_key, mapping={"spent": 875_000_000, "reserved": 5_000_000})
    try:
        resp = admin.get(f"/admin/keys/{name}/usage")
    finally:
        stack.redis().delete(spend_key)
    assert resp.status_code == 200
    data = resp.get_json()
    assert (data["name"], data["days"]) == (name, 30)
    assert data["total"] == {
        "requests": 3,
        "prompt_tokens": 31,
        "completion_tokens": 17,
        "cost_usd": 0.875,
    }
    assert data["by_model"] == [
        {"model": "m1", "requests": 2, "prompt_tokens": 11, "completion_tokens": 7,
         "cost_usd": 0.375},
        {"model": "m2", "requests": 1, "prompt_tokens": 20, "completion_tokens": 10,
         "cost_usd": 0.5},
    ]  # fmt: skip
    day = lambda t: time.strftime("%Y-%m-%d", time.gmtime(t))  # noqa: E731
    assert [(d["day"], d["requests"], d["cost_usd"]) for d in data["by_day"]] == [
        (day(yesterday), 1, 0.125),
        (day(today), 2, 0.75),
    ]
    assert data["budget"] == {
        "budget_usd": 10.0,
        "period": "month",
        "current": current,
        "spent_usd": 0.875,
        "reserved_usd": 0.005,
        "error": None,
    }
    wider = admin.get(f"/admin/keys/{name}/usage?days=45").get_json()
    assert wider["days"] == 45 and wider["total"]["requests"] == 4


@pytest.mark.parametrize("days", ["0", "-3", "many", "1.5"])
def test_usage_days_must_be_a_positive_integer(admin: Any, name: str, days: str) -> None:
    create(admin, name=name)
    err = error_of(admin.get(f"/admin/keys/{name}/usage?days={days}"), 400)
    assert err["message"] == f"days must be a positive integer, got {days!r}."
    assert err["param"] == "days"


def test_usage_without_redis_answers_the_log_part(
    make_app: Callable[..., Any], db_url: str, name: str
) -> None:
    from tests.conftest import free_port

    client = make_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0").test_client()
    create(client, name=name)
    engine = make_engine(db_url)
    write_entries(engine, [entry(name, "m1", time.time(), 3, 4, 0.5)])
    engine.dispose()
    resp = client.get(f"/admin/keys/{name}/usage")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    data = resp.get_json()
    assert data["total"]["requests"] == 1
    assert data["budget"]["error"] == "Redis is unavailable; the spend is unknown."
    assert (data["budget"]["spent_usd"], data["budget"]["reserved_usd"]) == (None, None)
