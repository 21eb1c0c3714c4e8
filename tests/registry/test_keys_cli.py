"""`irouter keys`, driven through CliRunner on a real registry file and the session's Redis."""

from __future__ import annotations

import calendar
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, text

from registry import make_engine
from registry.apikeys import SECRET_PREFIX, period_key
from registry.keys_cli import NOT_AGAIN, keys
from registry.requestlog import DAY, LogEntry, write_entries
from tasks import keys as redis_keys

Invoke = Callable[..., Result]


@pytest.fixture
def run(db_url: str, stack: Any) -> Invoke:
    """Invoke `keys` with DATABASE_URL at a fresh file and REDIS_URL at the session's Redis."""
    env = {"DATABASE_URL": db_url, "REDIS_URL": stack.redis_url}

    def invoke(*args: str, **extra: str) -> Result:
        return CliRunner(env={**env, **extra}).invoke(keys, list(args))

    return invoke


@pytest.fixture
def engine(db_url: str, run: Invoke) -> Iterator[Engine]:
    """The CLI's registry, created by a first command."""
    assert run("list").exit_code == 0
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def name() -> str:
    """A key name of this test alone: the session's Redis outlives it."""
    return f"team-{uuid.uuid4().hex[:8]}"


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.stdout


def fails(result: Result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [f"Error: {message}"]
    assert result.stdout == ""


def secrets_in(text_: str) -> list[str]:
    return [word for word in text_.split() if word.startswith(SECRET_PREFIX)]


def created(run: Invoke, name: str, *options: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok(run("create", name, *options, "--json")).splitlines()[-1])
    return data


def test_the_group_is_part_of_irouter() -> None:
    from api.cli import main

    assert main.commands["keys"] is keys
    assert set(keys.commands) == {"create", "list", "revoke", "rotate", "usage"}


def test_create_prints_the_secret_once(run: Invoke, db_url: str, name: str) -> None:
    out = ok(run("create", name))
    found = secrets_in(out)
    assert len(found) == 1 and out.count(found[0]) == 1
    secret = found[0]
    assert secret.startswith(SECRET_PREFIX) and len(secret) == len(SECRET_PREFIX) + 43
    assert out.splitlines() == [f"created key {name} ({secret[:10]}…)", secret, NOT_AGAIN]
    for args in (("list",), ("list", "--json"), ("usage", name), ("usage", name, "--json")):
        assert secret not in ok(run(*args)), args
        assert secret[:12] not in ok(run(*args)), args  # beyond the shown prefix, nothing


def test_only_the_hash_is_stored(run: Invoke, db_url: str, name: str) -> None:
    secret = created(run, name, "--rpm", "5")["key"]
    engine = make_engine(db_url)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM api_key"))]
    engine.dispose()
    assert len(rows) == 1
    assert rows[0]["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert rows[0]["shown"] == secret[:10]
    assert not any(secret in str(value) for value in rows[0].values())
    path = Path(db_url.removeprefix("sqlite:///"))
    for file in path.parent.glob(path.name + "*"):  # the database, its WAL and index
        assert secret.encode() not in file.read_bytes(), file


def test_create_json_last_line(run: Invoke, name: str) -> None:
    result = run(
        "create", name, "--models", "gpt-4o-mini, smollm2-135m,", "--rpm", "60", "--tpm", "9000",
        "--max-parallel", "3", "--budget", "12.5", "--budget-period", "week",
        "--expires", "2999-12-31", "--json",
    )  # fmt: skip
    out = ok(result)
    assert NOT_AGAIN in result.stderr and NOT_AGAIN not in out
    data = json.loads(out.splitlines()[-1])
    assert data["name"] == name and data["key"].startswith(SECRET_PREFIX)
    assert len(data["key"]) == len(SECRET_PREFIX) + 43
    assert data["models"] == ["gpt-4o-mini", "smollm2-135m"]
    assert (data["rpm"], data["tpm"], data["max_parallel"]) == (60, 9000, 3)
    assert (data["budget_usd"], data["budget_period"]) == (12.5, "week")
    assert data["expires_at"] == calendar.timegm((3000, 1, 1, 0, 0, 0))  # the day's end, UTC
    assert (data["status"], data["revoked_at"]) == ("active", None)
    assert data["created_at"] == pytest.approx(time.time(), abs=60)


def test_bad_values_are_one_line_errors(run: Invoke, name: str) -> None:
    fails(run("create", name, "--rpm", "0"), "rpm must be a positive integer, got 0")
    fails(
        run("create", name, "--budget-period", "year"),
        "budget period must be one of day, week, month, total, got 'year'",
    )
    fails(
        run("create", name, "--expires", "next week"),
        "expiry must be a date as YYYY-MM-DD, got 'next week'",
    )
    fails(run("create", "admin"), "'admin' is the admin key's name; choose another")
    assert ok(run("list")).startswith("no keys")  # nothing was created by any of them
    created(run, name)
    fails(run("create", name), f"key {name!r} already exists")
    for command in ("revoke", "rotate", "usage"):
        fails(run(command, "nobody"), "no key named 'nobody'")
    fails(run("usage", name, "--days", "0"), "days must be a positive integer, got 0")


def test_list_table_and_json(run: Invoke) -> None:
    a = created(run, "alpha", "--models", "m1,m2", "--rpm", "10", "--max-parallel", "2",
                "--budget", "5", "--expires", "2999-01-31")  # fmt: skip
    b = created(run, "beta")
    ok(run("revoke", "beta"))
    lines = ok(run("list")).splitlines()
    assert lines[0].split() == ["NAME", "KEY", "STATUS", "MODELS", "LIMITS", "BUDGET", "EXPIRES"]
    assert lines[1].split() == [
        "alpha", a["key"][:10] + "…", "active", "m1,m2", "rpm=10,parallel=2", "$5.00/month",
        "2999-01-31",
    ]  # fmt: skip
    assert lines[2].split() == ["beta", b["key"][:10] + "…", "revoked", "*", "-", "-", "-"]
    assert len(lines) == 3
    data = json.loads(ok(run("list", "--json")))
    assert [(k["name"], k["status"], k["key"]) for k in data] == [
        ("alpha", "active", a["key"][:10] + "…"),
        ("beta", "revoked", b["key"][:10] + "…"),
    ]
    assert data[0] == {**a, "key": a["key"][:10] + "…"}


def test_an_expired_key_lists_as_expired(run: Invoke, name: str) -> None:
    created(run, name, "--expires", "2000-01-01")
    assert ok(run("list")).splitlines()[1].split()[2] == "expired"


def test_revoke_and_rotate(run: Invoke, name: str) -> None:
    first = created(run, name, "--rpm", "7")
    assert ok(run("revoke", name)) == f"revoked key {name} ({first['key'][:10]}…)\n"
    assert json.loads(ok(run("list", "--json")))[0]["status"] == "revoked"
    assert ok(run("revoke", name))  # again: still revoked, not an error

    out = ok(run("rotate", name))
    (second,) = secrets_in(out)
    assert second != first["key"] and out.count(second) == 1
    assert out.splitlines() == [f"rotated key {name} ({second[:10]}…)", second, NOT_AGAIN]
    listed = json.loads(ok(run("list", "--json")))[0]
    assert listed["status"] == "active" and listed["rpm"] == 7
    assert listed["key"] == second[:10] + "…"

    third = json.loads(ok(run("rotate", name, "--json")).splitlines()[-1])
    assert third["key"] not in (first["key"], second) and third["name"] == name
    assert third["key"].startswith(SECRET_PREFIX) and third["rpm"] == 7


# -- usage ----------------------------------------------------------------------------------


def entry(key: str | None, model: str, at: float, prompt: int, completion: int, cost: float):
    return LogEntry(
        time=at,
        request_id=f"req_{uuid.uuid4().hex[:12]}",
        model=model,
        backend="local",
        status="200",
        latency_ms=10.0,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=cost,
        key_name=key,
    )


def day_of(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


@pytest.fixture
def logged(engine: Engine, run: Invoke, name: str) -> tuple[float, float]:
    """Key `name` and its log: two models over two days, a request 32 days old, and
    requests of another key and of none. Returns (today, yesterday) as log times."""
    created(run, name, "--budget", "2", "--budget-period", "day")
    midnight = time.time() // DAY * DAY
    today, yesterday, old = midnight + 1, midnight - 3600, time.time() - 32 * DAY
    write_entries(
        engine,
        [
            entry(name, "m1", today, 10, 5, 0.001),
            entry(name, "m1", today, 20, 10, 0.002),
            entry(name, "m2", today, 100, 50, 0.5),
            entry(name, "m1", yesterday, 1, 1, 0.0001),
            entry(name, "m2", old, 1000, 1000, 9.0),
            entry("someone-else", "m1", today, 7, 7, 7.0),
            entry(None, "m1", today, 7, 7, 7.0),
        ],
    )
    return today, yesterday


def test_usage_json_by_model_and_day(run: Invoke, name: str, logged: tuple[float, float]) -> None:
    today, yesterday = logged
    data = json.loads(ok(run("usage", name, "--json")))
    assert (data["name"], data["days"]) == (name, 30)
    assert data["since"] == pytest.approx(time.time() - 30 * DAY, abs=60)
    total = data["total"]
    assert (total["requests"], total["prompt_tokens"], total["completion_tokens"]) == (4, 131, 66)
    assert total["cost_usd"] == pytest.approx(0.5031)
    assert [(m["model"], m["requests"], m["prompt_tokens"], m["completion_tokens"])
            for m in data["by_model"]] == [("m1", 3, 31, 16), ("m2", 1, 100, 50)]  # fmt: skip
    assert data["by_model"][0]["cost_usd"] == pytest.approx(0.0031)
    assert [(d["day"], d["requests"], d["prompt_tokens"]) for d in data["by_day"]] == [
        (day_of(yesterday), 1, 1),
        (day_of(today), 3, 130),
    ]
    assert data["budget"] == {
        "budget_usd": 2.0,
        "period": "day",
        "current": period_key("day", time.time()),
        "spent_usd": 0.0,
        "reserved_usd": 0.0,
        "error": None,
    }

    wider = json.loads(ok(run("usage", name, "--days", "35", "--json")))
    assert wider["total"]["requests"] == 5
    assert [m["requests"] for m in wider["by_model"]] == [3, 2]
    assert len(wider["by_day"]) == 3


def test_usage_reads_the_budget_period_from_redis(
    run: Invoke, name: str, logged: tuple[float, float], stack: Any
) -> None:
    current = period_key("day", time.time())
    now_key, old_key = redis_keys.spend_key(name, current), redis_keys.spend_key(name, "day:2000")
    client = stack.redis()
    client.hset(now_key, mapping={"spent": 1_250_000_000, "reserved": 30_000_000})  # nano-USD
    client.hset(old_key, mapping={"spent": 10**12})  # another period: not this one's
    try:
        data = json.loads(ok(run("usage", name, "--json")))["budget"]
        assert (data["spent_usd"], data["reserved_usd"], data["error"]) == (1.25, 0.03, None)
        last = ok(run("usage", name)).splitlines()[-1]
        assert last == f"budget $2.00 per day; {current}: spent $1.25, reserved $0.03 (running)"
    finally:
        client.delete(now_key, old_key)


def test_usage_table(run: Invoke, name: str, logged: tuple[float, float]) -> None:
    today, yesterday = logged
    lines = ok(run("usage", name)).splitlines()
    assert lines[0].startswith(f"key {name}, last 30 days (since ")
    assert lines[1] == "total: 4 requests, 131 prompt + 66 completion tokens, $0.5031"
    model_at = lines.index("by model:")
    assert lines[model_at + 1].split() == ["MODEL", "REQUESTS", "PROMPT", "COMPLETION", "COST_USD"]
    assert lines[model_at + 2].split() == ["m1", "3", "31", "16", "0.0031"]
    assert lines[model_at + 3].split() == ["m2", "1", "100", "50", "0.5"]
    day_at = lines.index("by day:")
    assert lines[day_at + 1].split()[0] == "DAY"
    assert lines[day_at + 2].split() == [day_of(yesterday), "1", "1", "1", "0.0001"]
    assert lines[day_at + 3].split() == [day_of(today), "3", "130", "65", "0.503"]


def test_usage_of_a_key_without_requests(run: Invoke, name: str) -> None:
    created(run, name)
    lines = ok(run("usage", name)).splitlines()
    assert lines[1] == "total: 0 requests, 0 prompt + 0 completion tokens, $0.00"
    assert "by model:" not in lines
    assert lines[-1].startswith(f"budget none; {period_key('month', time.time())}: spent $0.00")


def test_usage_without_redis_still_shows_the_log(
    run: Invoke, name: str, logged: tuple[float, float]
) -> None:
    from tests.conftest import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    result = run("usage", name, REDIS_URL=url)
    lines = ok(result).splitlines()
    assert lines[1].startswith("total: 4 requests")
    current = period_key("day", time.time())
    budget = f"budget $2.00 per day; spend of {current} unknown: cannot reach Redis at {url}"
    assert lines[-1].startswith(budget)
    data = json.loads(ok(run("usage", name, "--json", REDIS_URL=url)))
    assert data["total"]["requests"] == 4
    assert (data["budget"]["spent_usd"], data["budget"]["reserved_usd"]) == (None, None)
    assert data["budget"]["error"].startswith(f"cannot reach Redis at {url}")
