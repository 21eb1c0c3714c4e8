"""API keys, allowlists, job ownership, rate limits, budgets and revocation, end to end: the
real API under gunicorn (two gevent workers), the real local worker on SmolLM2, real Redis,
and the real `openai` SDK.

Each test starts an API on a registry database of its own holding the keys it needs (keys
in the session's shared registry would switch auth on for every API using it), with key
names made unique per test so that their Redis state (buckets, budgets) starts empty; only
the test of a registry without keys uses the session's API.
"""

from __future__ import annotations

import itertools
import math
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import orjson
import pytest
from openai import OpenAI
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from tests.conftest import Stack

MODEL = "smollm2-135m"
ADMIN_KEY = "tenancy-admin-key-0123456789"
WRONG_KEY = "sk-ir-" + "w" * 43
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
#: A prompt the model answers at length: it does not stop before a small max_tokens.
COUNTING = [{"role": "user", "content": "Count from 1 to 100, separated by commas."}]
SHORT = {"model": MODEL, "messages": QUESTION, "max_tokens": 2, "temperature": 0}
LONG = {"model": MODEL, "messages": COUNTING, "max_tokens": 300, "temperature": 0}
RESET = re.compile(r"^(\d+ms|\d+s|\d+m\d+s)$")  # x-ratelimit-reset-*: 20ms, 1s, 6m0s
TERMINAL = {"done", "error", "cancelled"}


# -- an API on a registry of its own ---------------------------------------------------------


@dataclass
class TenantApi:
    """An API started on a registry of its own; `secrets` and `names` by the short names
    the test gave its keys."""

    url: str
    engine: Any
    secrets: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)

    def sdk(self, secret: str, timeout: float = 120) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=secret, max_retries=0, timeout=timeout)

    def http(self, secret: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


@pytest.fixture
def tenant_api(stack: Stack, start_api: Callable[..., str], worker: Any) -> Iterator[Any]:
    """Start an API on a fresh registry (the seed, plus `models` given as add_model's
    keyword arguments) holding one key per entry of `keys` (short name -> create_key's
    keyword arguments); stopped after the test."""
    from registry.apikeys import create_key
    from registry.crud import add_model
    from registry.db import init_db, make_engine

    started: list[subprocess.Popen[bytes]] = []

    def make(keys: dict[str, dict[str, Any]], models: tuple[dict, ...] = (), **env: str):
        tag = uuid.uuid4().hex[:8]
        db_url = f"sqlite:///{stack.tmp / f'tenancy-{tag}.db'}"
        engine = make_engine(db_url)
        init_db(engine, stack.env)
        for model in models:
            add_model(engine, **model)
        api = TenantApi("", engine)
        for short, options in keys.items():
            info, secret = create_key(engine, f"{short}-{tag}", **options)
            api.secrets[short], api.names[short] = secret, info.name
        api.url = start_api(f"api-tenancy-{tag}", DATABASE_URL=db_url, **env)
        started.append(stack.procs[-1])  # the gunicorn start_api just spawned
        return api

    yield make
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the session's teardown waits for it


# -- helpers ----------------------------------------------------------------------------------


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def assert_invalid_key(resp: httpx.Response, *secrets: str) -> None:
    """A 401 as OpenAI words it, that never echoes the key it was sent."""
    assert resp.status_code == 401, (resp.request.method, resp.request.url, resp.text)
    error = resp.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None
    for secret in secrets:
        assert secret not in resp.text


def poll(http: httpx.Client, job_id: str, until: set[str], timeout: float = 90) -> dict:
    give_up = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < give_up:
        resp = http.get(f"/v1/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        job = resp.json()
        if job["status"] in until:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {until}: {job}")


def sse_events(http: httpx.Client, path: str) -> list[str]:
    """The event types of a job's SSE stream, to its end."""
    events = []
    with http.stream("GET", path) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
    return events


class Socket:
    """A WebSocket client on wsproto, with headers and subprotocols, that keeps every frame
    (simple-websocket's client may lose one that arrives with the handshake response)."""

    def __init__(
        self,
        url: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        subprotocols: list[str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
        self.status = 0  # 101 once accepted, else the HTTP status that refused the upgrade
        self.subprotocol: str | None = None
        self.body = b""  # the refusal's body
        self.messages: list[dict] = []
        self.closed = False
        self._text = ""
        extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        request = Request(
            host=parts.netloc, target=path, extra_headers=extra, subprotocols=subprotocols or []
        )
        self.sock.sendall(self.ws.send(request))
        while not self.status and not self.closed:
            self._read()
        while self.status != 101 and not self.closed:
            self._read()  # the refusal's body, to its end

    def _read(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
        self.ws.receive_data(data or None)
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.status, self.subprotocol = 101, event.subprotocol
            elif isinstance(event, RejectConnection):
                self.status = event.status_code
                self.closed = not event.has_body
            elif isinstance(event, RejectData):
                self.body += event.data
                self.closed = self.closed or event.body_finished
            elif isinstance(event, TextMessage):
                self._text += event.data
                if event.message_finished:
                    self.messages.append(orjson.loads(self._text))
                    self._text = ""
            elif isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self.sock.sendall(self.ws.send(event.response()))
                self.closed = True

    def send(self, body: dict) -> None:
        self.sock.sendall(self.ws.send(TextMessage(data=orjson.dumps(body).decode())))

    def until(self, types: set[str], timeout: float = 90) -> list[dict]:
        """Every message so far, up to the first of one of `types` (waited for)."""
        give_up = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.messages):
                if msg["type"] in types:
                    taken, self.messages = self.messages[: i + 1], self.messages[i + 1 :]
                    return taken
            assert not self.closed, f"closed before any of {types}: {self.messages}"
            assert time.monotonic() < give_up, f"no {types} within {timeout}s: {self.messages}"
            self._read()

    def wait_closed(self, timeout: float = 30) -> None:
        """Read until the server closes the socket."""
        give_up = time.monotonic() + timeout
        while not self.closed:
            assert time.monotonic() < give_up, f"still open after {timeout}s: {self.messages}"
            self._read()

    def close(self) -> None:
        try:
            if self.ws.state is ConnectionState.OPEN:
                self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chat_over(sock: Socket) -> list[dict]:
    """Send SHORT on an open /v1/ws and read its events to the end; they must succeed."""
    sock.send(SHORT)
    msgs = sock.until(TERMINAL)
    assert msgs[0]["type"] == "job", msgs
    assert msgs[-1]["type"] == "done", msgs
    assert msgs[-1]["usage"]["completion_tokens"] > 0
    return msgs


def follow_over(sock: Socket) -> None:
    """Read a finished job on an open /v1/jobs/{id}/ws: its tokens, then done."""
    msgs = sock.until(TERMINAL)
    assert msgs[-1]["type"] == "done", msgs
    assert msgs[-1]["usage"]["completion_tokens"] > 0


def socket_refused(sock: Socket) -> None:
    """An error message saying invalid_api_key, then the end of the socket."""
    msgs = sock.until({"error"}, timeout=30)
    assert msgs[-1]["error"]["code"] == "invalid_api_key", msgs
    assert not [m for m in msgs if m["type"] in ("job", "token", "done")]
    sock.wait_closed()
    assert sock.messages == []


# -- 1. auth on every /v1 route --------------------------------------------------------------


def routes_work(url: str, sdk_key: str, headers: dict[str, str], job_id: str = "") -> None:
    """Every /v1 route answers: the SDK's with `sdk_key` (the SDK always sends one), the
    others with `headers` (none at all, or a key's); `job_id` is a finished job the caller
    may see (made here when not given)."""
    client = OpenAI(base_url=url + "/v1", api_key=sdk_key, max_retries=0, timeout=120)
    answer = client.chat.completions.create(**SHORT)
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(**SHORT, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] is not None
    assert MODEL in [m.id for m in client.models.list()]
    assert client.models.retrieve(MODEL).id == MODEL
    with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
        if not headers:  # the SDK's requests above carried a key
            assert http.post("/v1/chat/completions", json=SHORT).status_code == 200
        assert http.get("/v1/models").status_code == 200
        assert http.get(f"/v1/models/{MODEL}").status_code == 200
        if not job_id:
            created = http.post("/v1/jobs", json=SHORT)
            assert created.status_code == 202, created.text
            job_id = poll(http, created.json()["id"], {"succeeded"})["id"]
        assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        assert sse_events(http, f"/v1/jobs/{job_id}/events")[-1] == "done"
        queued = http.post("/v1/jobs", json=LONG)
        assert queued.status_code == 202, queued.text
        cancelled = http.delete(f"/v1/jobs/{queued.json()['id']}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
    with Socket(url, "/v1/ws", headers=headers) as sock:
        assert sock.status == 101
        chat_over(sock)
    with Socket(url, f"/v1/jobs/{job_id}/ws", headers=headers) as sock:
        assert sock.status == 101
        follow_over(sock)


def routes_refuse(url: str, secret: str | None, job_id: str) -> None:
    """Every /v1 route answers 401 invalid_api_key to `secret` (None: no key at all)."""
    sent = [secret] if secret else []
    if secret is not None:
        client = OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0, timeout=30)
        calls: list[Callable[[], Any]] = [
            lambda: client.chat.completions.create(**SHORT),
            lambda: list(client.chat.completions.create(**SHORT, stream=True)),
            lambda: client.models.list(),
            lambda: client.models.retrieve(MODEL),
        ]
        for call in calls:
            with pytest.raises(openai.AuthenticationError) as refused:
                call()
            assert refused.value.status_code == 401
            assert refused.value.code == "invalid_api_key"
            assert secret not in str(refused.value.body)
    headers = auth(secret) if secret else {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        assert_invalid_key(http.post("/v1/chat/completions", json=SHORT), *sent)
        stream = {**SHORT, "stream": True}
        assert_invalid_key(http.post("/v1/chat/completions", json=stream), *sent)
        assert_invalid_key(http.get("/v1/models"), *sent)
        assert_invalid_key(http.get(f"/v1/models/{MODEL}"), *sent)
        assert_invalid_key(http.post("/v1/jobs", json=SHORT), *sent)
        assert_invalid_key(http.get(f"/v1/jobs/{job_id}"), *sent)
        assert_invalid_key(http.delete(f"/v1/jobs/{job_id}"), *sent)
        assert_invalid_key(http.get(f"/v1/jobs/{job_id}/events"), *sent)
        assert_invalid_key(http.get("/v1/jobs/job_doesnotexist"), *sent)  # 401 before 404
    for path in ("/v1/ws", f"/v1/jobs/{job_id}/ws"):
        if secret is None:
            # No key at the handshake: the first message must bring one; a request does not.
            with Socket(url, path) as sock:
                assert sock.status == 101
                sock.send(SHORT)
                socket_refused(sock)
            continue
        offered = ["irouter", f"irouter-key.{secret}"]
        for options in ({"headers": auth(secret)}, {"subprotocols": offered}):
            # refused at the handshake
            with Socket(url, path, **options) as sock:  # type: ignore[arg-type]
                assert sock.status == 401, (path, options, sock.body)
                body = orjson.loads(sock.body)
                assert body["error"]["code"] == "invalid_api_key"
                assert secret.encode() not in sock.body
        with Socket(url, path) as sock:  # refused by its first message
            assert sock.status == 101
            sock.send({"type": "auth", "key": secret})
            socket_refused(sock)


def test_every_v1_route_needs_a_valid_key_once_keys_exist(tenant_api) -> None:
    api = tenant_api({"alice": {}}, ROUTER_ADMIN_KEY=ADMIN_KEY)
    secret = api.secrets["alice"]
    with api.http(secret) as http:
        job_id = http.post("/v1/jobs", json=SHORT).json()["id"]
        poll(http, job_id, {"succeeded"})

    routes_refuse(api.url, None, job_id)
    routes_refuse(api.url, WRONG_KEY, job_id)
    routes_refuse(api.url, "not-even-a-router-key", job_id)
    with httpx.Client(base_url=api.url, timeout=30) as http:  # not in the URL, nor unschemed
        assert_invalid_key(http.get("/v1/models", params={"api_key": secret}))
        assert_invalid_key(http.get("/v1/models", headers={"Authorization": secret}))

    # An Upgrade header does not make an HTTP request a WebSocket handshake (whose key may
    # come in its first message): it needs its key now, like any other.
    with httpx.Client(base_url=api.url, headers={"Upgrade": "websocket"}, timeout=30) as http:
        assert_invalid_key(http.get("/v1/models"))
        assert_invalid_key(http.post("/v1/chat/completions", json=SHORT))
        assert_invalid_key(http.get(f"/v1/jobs/{job_id}"))

    routes_work(api.url, secret, auth(secret), job_id)

    # A WebSocket also takes the key as subprotocols (the server selects `irouter`, never
    # the key) or as its first message, on both sockets; the socket stays authenticated.
    key_protocols = ["irouter", f"irouter-key.{secret}"]
    with Socket(api.url, "/v1/ws", subprotocols=key_protocols) as sock:
        assert (sock.status, sock.subprotocol) == (101, "irouter")
        chat_over(sock)
        sock.send({**SHORT, "model": "no-such-model"})
        assert sock.until({"error"})[-1]["error"]["code"] == "model_not_found"
    with Socket(api.url, "/v1/ws") as sock:
        assert sock.status == 101
        sock.send({"type": "auth", "key": secret})
        chat_over(sock)
    with Socket(api.url, f"/v1/jobs/{job_id}/ws", subprotocols=key_protocols) as sock:
        assert (sock.status, sock.subprotocol) == (101, "irouter")
        follow_over(sock)
    with Socket(api.url, f"/v1/jobs/{job_id}/ws") as sock:
        sock.send({"type": "auth", "key": secret})
        follow_over(sock)

    # The admin key is a key on /v1 too, and sees every key's jobs.
    admin = api.sdk(ADMIN_KEY)
    assert admin.chat.completions.create(**SHORT).usage.completion_tokens > 0  # type: ignore[union-attr]
    assert MODEL in [m.id for m in admin.models.list()]
    with api.http(ADMIN_KEY) as http:
        assert http.get(f"/v1/jobs/{job_id}").status_code == 200
        assert sse_events(http, f"/v1/jobs/{job_id}/events")[-1] == "done"
    with Socket(api.url, f"/v1/jobs/{job_id}/ws") as sock:
        sock.send({"type": "auth", "key": ADMIN_KEY})
        follow_over(sock)
    with Socket(api.url, "/v1/ws", subprotocols=["irouter", f"irouter-key.{ADMIN_KEY}"]) as sock:
        assert (sock.status, sock.subprotocol) == (101, "irouter")
        sock.send({**SHORT, "model": "no-such-model"})  # past auth: the model is what is wrong
        assert sock.until({"error"})[-1]["error"]["code"] == "model_not_found"


def test_without_keys_on_loopback_every_route_is_open(api_url: str) -> None:
    """The session's API: loopback, no key in its registry (auth auto): open to anyone,
    with no key or any key."""
    routes_work(api_url, WRONG_KEY, {})
    with httpx.Client(base_url=api_url, headers=auth(WRONG_KEY), timeout=30) as http:
        assert http.get("/v1/models").status_code == 200
    with Socket(api_url, "/v1/ws", headers=auth(WRONG_KEY)) as sock:
        assert sock.status == 101
        sock.send({**SHORT, "model": "no-such-model"})  # a request at once: no auth message
        assert sock.until({"error"})[-1]["error"]["code"] == "model_not_found"


def test_auth_off_ignores_the_registry_keys(tenant_api) -> None:
    api = tenant_api({"alice": {"models": ("nothing-at-all",)}}, ROUTER_AUTH="off")
    client = api.sdk(WRONG_KEY)
    assert MODEL in [m.id for m in client.models.list()]  # no key: no allowlist either
    assert client.chat.completions.create(**SHORT).usage.completion_tokens > 0  # type: ignore[union-attr]
    with api.http() as http:
        assert http.get(f"/v1/models/{MODEL}").status_code == 200
        assert http.get("/v1/jobs/job_doesnotexist").status_code == 404
    with Socket(api.url, "/v1/ws") as sock:
        assert sock.status == 101
        sock.send({**SHORT, "model": "no-such-model"})
        assert sock.until({"error"})[-1]["error"]["code"] == "model_not_found"


# -- 2. allowlist ----------------------------------------------------------------------------

OTHER = "smol-other"  # the same local model under another id


def test_a_key_sees_and_uses_only_its_allowed_models(tenant_api) -> None:
    other = {"id": OTHER, "backend": "local", "upstream": MODEL, "aliases": ("smol-alias",)}
    api = tenant_api({"narrow": {"models": (OTHER,)}}, models=(other,))
    secret = api.secrets["narrow"]
    client = api.sdk(secret)

    assert [m.id for m in client.models.list()] == [OTHER]
    assert client.models.retrieve(OTHER).id == OTHER
    for name in (MODEL, "smollm2", "local"):  # the seed's model, by id and by its aliases
        with pytest.raises(openai.NotFoundError) as refused:
            client.models.retrieve(name)
        assert refused.value.code == "model_not_found"
        with pytest.raises(openai.NotFoundError) as refused:
            client.chat.completions.create(**{**SHORT, "model": name})
        assert refused.value.code == "model_not_found"
        message = str(refused.value.body["message"])  # type: ignore[index]
        assert f"The model `{name}` does not exist or you do not have access to it." == message
    # Not allowed reads exactly as not existing: the allowlist stays private.
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(**{**SHORT, "model": "no-such-model"})
    assert missing.value.code == "model_not_found"

    answer = client.chat.completions.create(**{**SHORT, "model": "smol-alias"})
    assert answer.model == OTHER
    assert answer.usage is not None and answer.usage.completion_tokens > 0

    with api.http(secret) as http:
        refused_job = http.post("/v1/jobs", json=SHORT)
        assert refused_job.status_code == 404
        assert refused_job.json()["error"]["code"] == "model_not_found"
        job = http.post("/v1/jobs", json={**LONG, "model": OTHER})
        assert job.status_code == 202, job.text
        assert job.json()["model"] == OTHER
        assert http.delete(f"/v1/jobs/{job.json()['id']}").status_code == 200
    with Socket(api.url, "/v1/ws", headers=auth(secret)) as sock:
        sock.send(SHORT)
        assert sock.until({"error"})[-1]["error"]["code"] == "model_not_found"


# -- 3. job ownership ------------------------------------------------------------------------


def test_a_key_cannot_see_another_keys_jobs(tenant_api) -> None:
    api = tenant_api({"owner": {}, "other": {}}, ROUTER_ADMIN_KEY=ADMIN_KEY)
    a, b = api.secrets["owner"], api.secrets["other"]
    with api.http(a) as mine, api.http(b) as theirs, api.http(ADMIN_KEY) as admin:
        job_id = mine.post("/v1/jobs", json=SHORT).json()["id"]
        poll(mine, job_id, {"succeeded"})

        for resp in (
            theirs.get(f"/v1/jobs/{job_id}"),
            theirs.delete(f"/v1/jobs/{job_id}"),
            theirs.get(f"/v1/jobs/{job_id}/events"),
        ):
            assert resp.status_code == 404, resp.text
            assert resp.json()["error"]["code"] == "job_not_found"  # as for no job at all
        with Socket(api.url, f"/v1/jobs/{job_id}/ws", headers=auth(b)) as sock:
            msgs = sock.until({"error"}, timeout=30)
            assert msgs[-1]["error"]["code"] == "job_not_found", msgs
            assert not [m for m in msgs if m["type"] == "token"]
        assert mine.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        assert admin.get(f"/v1/jobs/{job_id}").status_code == 200  # the admin sees every job

        # An Idempotency-Key is each key's own: the same one from two keys, two jobs.
        headers = {"Idempotency-Key": f"shared-{uuid.uuid4().hex}"}
        first = mine.post("/v1/jobs", json=SHORT, headers=headers)
        second = theirs.post("/v1/jobs", json=SHORT, headers=headers)
        again = mine.post("/v1/jobs", json=SHORT, headers=headers)
        assert first.status_code == second.status_code == again.status_code == 202
        assert first.json()["id"] != second.json()["id"]
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in second.headers
        assert theirs.get(f"/v1/jobs/{first.json()['id']}").status_code == 404
        assert theirs.delete(f"/v1/jobs/{first.json()['id']}").status_code == 404
        assert mine.get(f"/v1/jobs/{second.json()['id']}").status_code == 404
        assert mine.delete(f"/v1/jobs/{first.json()['id']}").status_code in (200, 409)
        assert theirs.delete(f"/v1/jobs/{second.json()['id']}").status_code in (200, 409)


# -- 4. limits -------------------------------------------------------------------------------


def test_rpm_limit_refuses_the_third_request_in_a_minute(tenant_api) -> None:
    api = tenant_api({"slow": {"rpm": 2}})
    secret = api.secrets["slow"]
    client = api.sdk(secret)

    raw = client.chat.completions.with_raw_response.create(**SHORT)
    assert raw.parse().usage.completion_tokens > 0  # type: ignore[union-attr]
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert RESET.match(raw.headers["x-ratelimit-reset-requests"])
    assert "x-ratelimit-limit-tokens" not in raw.headers  # no TPM on this key

    with api.http(secret) as http:
        job = http.post("/v1/jobs", json=LONG)  # a job counts as a request too
        assert job.status_code == 202, job.text
        assert job.headers["x-ratelimit-remaining-requests"] == "0"
        models = http.get("/v1/models")  # reading costs no request, but tells the state
        assert models.status_code == 200
        assert models.headers["x-ratelimit-limit-requests"] == "2"
        assert models.headers["x-ratelimit-remaining-requests"] == "0"

        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(**SHORT)
        assert refused.value.code == "rate_limit_exceeded"
        retry_after = int(refused.value.response.headers["retry-after"])
        assert 1 <= retry_after <= 30  # one request drains in 30 s at 2 a minute
        assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"

        again = http.post("/v1/jobs", json=SHORT)
        assert again.status_code == 429
        assert again.json()["error"]["code"] == "rate_limit_exceeded"
        assert "retry-after" in again.headers
        assert http.delete(f"/v1/jobs/{job.json()['id']}").status_code in (200, 409)


TPM = 300


def test_tpm_limit_refuses_what_would_exceed_it(tenant_api) -> None:
    from workers.protocol import prompt_token_estimate

    api = tenant_api({"tokens": {"tpm": TPM}})
    secret = api.secrets["tokens"]
    client = api.sdk(secret)
    estimate = prompt_token_estimate(QUESTION)

    # Larger than the whole minute's limit: refused whatever the bucket holds.
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(**{**SHORT, "max_tokens": TPM - estimate + 1})
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.response.headers["x-ratelimit-remaining-tokens"] == str(TPM)

    raw = client.chat.completions.with_raw_response.create(**SHORT)
    assert raw.parse().usage.completion_tokens > 0  # type: ignore[union-attr]
    assert raw.headers["x-ratelimit-limit-tokens"] == str(TPM)
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) <= TPM - estimate - SHORT["max_tokens"]
    assert RESET.match(raw.headers["x-ratelimit-reset-tokens"])
    assert "x-ratelimit-limit-requests" not in raw.headers  # no RPM on this key

    # Two requests that fit alone but not together: the second waits for the first's tokens.
    half = {**LONG, "max_tokens": TPM // 2}
    with api.http(secret) as http:
        first = http.post("/v1/jobs", json=half)
        assert first.status_code == 202, first.text
        second = http.post("/v1/jobs", json=half)
        assert second.status_code == 429, second.text
        assert second.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(second.headers["retry-after"]) >= 1
        assert "x-ratelimit-remaining-tokens" in second.headers
        cancelled = http.delete(f"/v1/jobs/{first.json()['id']}")
        assert cancelled.status_code in (200, 409), cancelled.text


def test_max_parallel_runs_one_job_of_the_key_at_a_time(tenant_api, stack: Stack) -> None:
    from tasks.jobs import JobStore

    api = tenant_api({"serial": {"max_parallel": 1}})
    body = {**LONG, "max_tokens": 3}
    with api.http(api.secrets["serial"]) as http:
        ids = []
        for _ in range(3):  # the worker could run all three at once (concurrency 4)
            resp = http.post("/v1/jobs", json=body)
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])
        most_running = 0
        give_up = time.monotonic() + 120
        while True:
            statuses = [http.get(f"/v1/jobs/{i}").json()["status"] for i in ids]
            most_running = max(most_running, statuses.count("running"))
            if all(s in ("succeeded", "failed", "cancelled") for s in statuses):
                break
            assert time.monotonic() < give_up, statuses
            time.sleep(0.05)
    assert statuses == ["succeeded"] * 3
    assert most_running <= 1
    store = JobStore(stack.redis())
    records = sorted((store.record(i) for i in ids), key=lambda r: r.started or 0)
    for before, after in itertools.pairwise(records):
        assert before.finished is not None and after.started is not None
        assert after.started >= before.finished, (before, after)  # never overlapping


# -- 5. budget -------------------------------------------------------------------------------

PRICED = "priced-smol"  # the local model at a price, so that a budget has something to count
INPUT_PRICE = 10.0  # USD per 1M tokens
OUTPUT_PRICE = 4000.0
MAX_TOKENS = 3
REGISTRY_TTL = 1.0  # seconds: ROUTER_REGISTRY_TTL's default
CONCURRENT = 30


def test_concurrent_requests_never_spend_past_the_budget(tenant_api, stack: Stack) -> None:
    from api.tenancy import TEMPLATE_TOKENS
    from registry.apikeys import create_key
    from registry.requestlog import recent_entries
    from tasks.tenants import NANO, Tenants

    priced = {
        "id": PRICED,
        "backend": "local",
        "upstream": MODEL,
        "input_price": INPUT_PRICE,
        "output_price": OUTPUT_PRICE,
    }
    body = {"model": PRICED, "messages": COUNTING, "max_tokens": MAX_TOKENS, "temperature": 0}
    api = tenant_api({"bystander": {}}, models=(priced,))  # a key: auth is on

    # The worst case admission reserves depends on the bytes the SDK sends for this body:
    # a refused request (wrong key) shows them.
    with pytest.raises(openai.AuthenticationError) as probe:
        api.sdk(WRONG_KEY).chat.completions.create(**body)
    size = int(probe.value.response.request.headers["content-length"])
    worst = math.ceil(
        ((size + TEMPLATE_TOKENS) * INPUT_PRICE + MAX_TOKENS * OUTPUT_PRICE) * NANO / 1e6
    )
    budget = (10 * worst + worst // 2) / NANO  # ten worst cases fit, eleven do not
    limit = math.floor(budget * NANO)  # the budget as admission counts it, in nano-USD
    assert limit // worst == 10
    # The prompt's share of the worst case matters: without it, twelve would fit.
    assert limit // math.ceil(MAX_TOKENS * OUTPUT_PRICE * NANO / 1e6) > 10

    name = f"spender-{uuid.uuid4().hex[:8]}"
    _, secret = create_key(api.engine, name, budget_usd=budget, budget_period="total")
    # A budget that covers a long prompt's worst case only if its size is not counted.
    long_body = {**body, "messages": [{"role": "user", "content": "Say hi. " * 150}]}
    long_size = len(orjson.dumps(long_body))
    output = MAX_TOKENS * OUTPUT_PRICE
    unsized = (TEMPLATE_TOKENS * INPUT_PRICE + output) / 1e6
    sized = ((long_size + TEMPLATE_TOKENS) * INPUT_PRICE + output) / 1e6
    small_budget = (unsized + sized) / 2
    _, small = create_key(
        api.engine, f"small-{name}", budget_usd=small_budget, budget_period="total"
    )
    time.sleep(REGISTRY_TTL + 0.2)  # every API process's registry snapshot has the keys now
    client = api.sdk(secret)

    start = threading.Barrier(CONCURRENT)
    results: list[Any] = [None] * CONCURRENT

    def ask(i: int) -> None:
        start.wait()
        try:
            results[i] = client.chat.completions.create(**body)
        except openai.APIError as exc:
            results[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(CONCURRENT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads)

    answered = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(answered) + len(refused) == CONCURRENT, results  # nothing else went wrong
    assert [r.code for r in refused] == ["insufficient_quota"] * len(refused)
    # All arrive together, long before any ends (and gives back what it did not use).
    assert len(answered) == 10

    # Every request is recorded, refused ones included: wait for the API's log writer.
    def logged() -> list[Any]:
        return [e for e in recent_entries(api.engine, 500) if e.key_name == name]

    give_up = time.monotonic() + 30
    while len(logged()) < CONCURRENT:
        assert time.monotonic() < give_up, logged()
        time.sleep(0.2)
    entries = logged()
    assert sorted(e.status for e in entries) == ["200"] * 10 + ["429"] * (CONCURRENT - 10)
    assert all(e.cost_usd == 0 for e in entries if e.status == "429")
    spent_usd = sum(e.cost_usd for e in entries)
    assert 0 < spent_usd <= budget

    tenants = Tenants(stack.redis())
    give_up = time.monotonic() + 10
    while (found := tenants.spend(name, "total"))[1] != 0:
        assert time.monotonic() < give_up, found
        time.sleep(0.1)
    spent = found[0]
    assert spent <= limit
    assert abs(spent - spent_usd * NANO) <= 10  # each settled to the nano-USD

    # The key is served while the rest of its budget covers a worst case, then refused.
    for _ in range(4):
        if limit - spent < worst:
            break
        assert client.chat.completions.create(**body).usage is not None
        give_up = time.monotonic() + 10
        while (found := tenants.spend(name, "total"))[1] != 0:
            assert time.monotonic() < give_up, found
            time.sleep(0.1)
        assert found[0] > spent
        spent = found[0]
    assert spent <= limit < spent + worst
    with pytest.raises(openai.RateLimitError) as after:
        client.chat.completions.create(**body)
    assert after.value.code == "insufficient_quota"

    # The prompt is reserved at its size however the body is sent: with a Content-Length,
    # or chunked (a body without one).
    with api.http(small) as http:
        raw = orjson.dumps(long_body)
        json_type = {"Content-Type": "application/json"}
        with_length = http.post("/v1/chat/completions", content=raw, headers=json_type)
        chunked = http.post("/v1/chat/completions", content=iter([raw]), headers=json_type)
    assert "content-length" not in chunked.request.headers
    for resp in (with_length, chunked):
        assert resp.status_code == 429, resp.text
        assert resp.json()["error"]["code"] == "insufficient_quota"


# -- 6. revocation ---------------------------------------------------------------------------


def test_a_revoked_key_is_refused_within_a_second(tenant_api) -> None:
    from registry.apikeys import revoke_key

    api = tenant_api({"doomed": {}})
    secret, name = api.secrets["doomed"], api.names["doomed"]
    client = api.sdk(secret, timeout=30)
    assert MODEL in [m.id for m in client.models.list()]

    revoke_key(api.engine, name)
    revoked = time.monotonic()
    # Refused within the registry's TTL (1 s), and from then on by both API processes: each
    # request on a fresh connection, which either process may take.
    first_refusal = None
    while time.monotonic() - revoked < 2.5:
        sent = time.monotonic()
        with httpx.Client(base_url=api.url, timeout=30) as http:
            resp = http.get("/v1/models", headers=auth(secret))
        if resp.status_code == 401:
            assert_invalid_key(resp, secret)
            first_refusal = first_refusal or sent - revoked
        else:
            assert resp.status_code == 200
            assert sent - revoked < 1.5, f"still served {sent - revoked:.2f}s after revocation"
        time.sleep(0.02)
    assert first_refusal is not None and first_refusal < 1.5
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(**SHORT)
    with Socket(api.url, "/v1/ws", headers=auth(secret)) as sock:
        assert sock.status == 401
    # The only key, revoked, still counts as a key: the API does not fall open.
    with httpx.Client(base_url=api.url, timeout=30) as http:
        assert_invalid_key(http.get("/v1/models"))


def test_a_revoked_key_is_refused_on_a_socket_opened_before(tenant_api) -> None:
    from registry.apikeys import revoke_key

    api = tenant_api({"doomed": {}})
    secret = api.secrets["doomed"]
    with Socket(api.url, "/v1/ws", headers=auth(secret)) as sock:
        sock.send({**SHORT, "model": "no-such-model"})  # past auth: the model is wrong
        assert sock.until({"error"})[-1]["error"]["code"] == "model_not_found"
        revoke_key(api.engine, api.names["doomed"])
        time.sleep(REGISTRY_TTL + 0.5)
        sock.send({**SHORT, "model": "no-such-model"})
        assert sock.until({"error"})[-1]["error"]["code"] == "invalid_api_key"
