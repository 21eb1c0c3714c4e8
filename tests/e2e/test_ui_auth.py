"""The web UI with auth on, in a real headless Chromium against the real API under gunicorn,
the real local worker and the SmolLM2 model (see test_ui.py for the UI with auth off).

The API here has a registry of its own with one key (so `ROUTER_AUTH=auto` requires one)
and ROUTER_ADMIN_KEY set. The playground asks for an API key, refuses a wrong one, keeps the
right one in localStorage, sends it as a Bearer header to /v1 and as a WebSocket subprotocol
(never in a URL), and a chat completes; the ops view asks for the admin key, keeps it in
sessionStorage and then shows the backends.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import Stack
from tests.e2e.test_ui import CHROMIUM, ask, field

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"
)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="needs the playwright package (pip install playwright)"
)
expect = sync_api.expect

ADMIN_KEY = "ui-auth-admin-key-0123456789"
WRONG_KEY = "sk-ir-" + "x" * 43
#: What Chromium logs for every answer with status 401: expected here, not a problem.
REFUSED = re.compile(r"Failed to load resource: .*\b401\b")


@dataclass
class AuthApi:
    url: str
    secret: str  # the registry's one API key


@pytest.fixture(scope="module")
def auth_api(stack: Stack, start_api: Callable[..., str], worker: Any) -> AuthApi:
    """An API on a registry of its own holding one key, with an admin key set."""
    from registry.apikeys import create_key
    from registry.db import init_db, make_engine

    db_url = f"sqlite:///{stack.tmp / 'ui-auth.db'}"
    engine = make_engine(db_url)
    init_db(engine, stack.env)
    _, secret = create_key(engine, "ui-tester")
    url = start_api("api-ui-auth", DATABASE_URL=db_url, ROUTER_ADMIN_KEY=ADMIN_KEY)
    assert httpx.get(url + "/v1/models", timeout=10).status_code == 401  # auth is on
    return AuthApi(url, secret)


@pytest.fixture
def page(browser: Any, auth_api: AuthApi) -> Iterator[Any]:
    """A fresh page that records console errors (but the 401s this test causes), every URL it
    requests, WebSockets included, and the Authorization header of each HTTP request."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.problems = []
    page.urls = []
    page.auth = []  # (path, Authorization header or None)
    page.on("pageerror", lambda exc: page.problems.append(f"page error: {exc}"))

    def console(msg: Any) -> None:
        if msg.type == "error" and not REFUSED.search(msg.text):
            page.problems.append(f"console: {msg.text}")

    def request(req: Any) -> None:
        page.urls.append(req.url)
        path = req.url.removeprefix(auth_api.url)
        page.auth.append((path, req.headers.get("authorization")))

    page.on("console", console)
    page.on("request", request)
    page.on("websocket", lambda ws: page.urls.append(ws.url))
    yield page
    context.close()


def sent(page: Any, prefix: str) -> set[str | None]:
    """The Authorization headers the page sent to paths starting with `prefix`."""
    return {auth for path, auth in page.auth if path.startswith(prefix)}


def test_playground_asks_for_a_key_and_chats_with_it(page: Any, auth_api: AuthApi) -> None:
    page.goto(auth_api.url + "/")
    form = page.locator("#key-form")
    expect(form).to_be_visible()
    expect(page.locator("#key-refused")).to_be_hidden()
    expect(page.locator("#ws-status")).to_have_attribute("data-state", "key")
    expect(page.locator("#model-info")).to_have_text("needs an API key")

    # A wrong key is refused, and not kept.
    page.fill("#api-key", WRONG_KEY)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-refused")).to_be_visible()
    expect(form).to_be_visible()
    assert page.evaluate("localStorage.getItem('irouter.apiKey')") is None

    # The right one: models load, the socket opens, a chat completes.
    page.fill("#api-key", auth_api.secret)
    page.click("#key-form button[type=submit]")
    expect(form).to_be_hidden()
    expect(page.locator("#ws-status")).to_have_attribute("data-state", "open")
    expect(page.locator("#model")).to_have_value("smollm2-135m")
    expect(page.locator("#key-shown")).to_have_text(auth_api.secret[:10] + "\u2026")
    assert page.evaluate("localStorage.getItem('irouter.apiKey')") == auth_api.secret
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "12")
    answer = ask(page, "What is the capital of France?")
    expect(answer).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(field(answer, "model")).to_have_text("smollm2-135m")
    assert f"Bearer {auth_api.secret}" in sent(page, "/v1/models")

    # Kept across a reload: no form, straight to an open socket.
    page.reload()
    expect(page.locator("#ws-status")).to_have_attribute("data-state", "open")
    expect(form).to_be_hidden()

    # Forgotten: the form is back.
    page.click("#key-forget")
    expect(form).to_be_visible()
    expect(page.locator("#key-refused")).to_be_hidden()
    expect(page.locator("#ws-status")).to_have_attribute("data-state", "key")
    assert page.evaluate("localStorage.getItem('irouter.apiKey')") is None

    assert [u for u in page.urls if auth_api.secret in u or WRONG_KEY in u] == []
    assert any(u.endswith("/v1/ws") for u in page.urls)
    assert sent(page, "/admin") <= {None}  # the API key never goes to the admin endpoints
    assert page.problems == []


def test_ops_asks_for_the_admin_key_then_shows_backends(page: Any, auth_api: AuthApi) -> None:
    page.goto(auth_api.url + "/ops")
    form = page.locator("#admin-form")
    expect(form).to_be_visible()
    expect(page.locator("#admin-refused")).to_be_hidden()
    expect(page.locator("#ops-error")).to_be_empty()  # the form, not a 401 error box

    page.fill("#admin-key", "not-the-admin-key")
    page.click("#admin-form button[type=submit]")
    expect(page.locator("#admin-refused")).to_be_visible()
    expect(form).to_be_visible()

    page.fill("#admin-key", ADMIN_KEY)
    page.click("#admin-form button[type=submit]")
    expect(form).to_be_hidden()
    local = page.locator('#backends tbody tr[data-backend="local"]')
    expect(local.locator(".chip")).to_have_text("local-mps")
    expect(page.locator("#ops-error")).to_be_empty()
    expect(page.locator("#admin-forget")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('irouter.adminKey')") == ADMIN_KEY
    assert page.evaluate("localStorage.getItem('irouter.adminKey')") is None
    assert f"Bearer {ADMIN_KEY}" in sent(page, "/admin/backends")

    # Forgotten: asked for again.
    page.click("#admin-forget")
    expect(form).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('irouter.adminKey')") is None
    assert [u for u in page.urls if ADMIN_KEY in u] == []
    assert page.problems == []
