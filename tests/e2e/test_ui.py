"""The web UI in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright)
against the real API under gunicorn, the real local worker and the SmolLM2 model.

The playground streams an answer over `WS /v1/ws`, Stop cancels a long one (the job ends
`cancelled` in `GET /v1/jobs/{id}`), a bad request shows its OpenAI error, and the ops view
lists the worker, the backends and the jobs the playground ran. With UPDATE_SCREENSHOTS=1
it writes docs/img/playground.png and docs/img/ops.png.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import BIN, ROOT, Stack, _answers, free_port, wait_until
from tests.e2e.conftest import CHROMIUM

SHOTS = ROOT / "docs" / "img"
UPDATE_SCREENSHOTS = os.environ.get("UPDATE_SCREENSHOTS") == "1"
LONG_PROMPT = "Write a long poem about the sea and the sky."

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"
)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="needs the playwright package (pip install playwright)"
)
expect = sync_api.expect


def app_with_ui() -> Any:
    """The API with the UI blueprint, for gunicorn, where `create_app` does not yet add it."""
    from api import create_app
    from api.blueprints import ui

    app = create_app()
    if "ui" not in app.blueprints:
        app.register_blueprint(ui.bp)
    return app


def _serves_ui(url: str) -> bool:
    resp = httpx.get(url + "/", timeout=5)
    return resp.status_code == 200 and "/ui/app.js" in resp.text


@pytest.fixture(scope="module")
def ui_url(api_url: str, stack: Stack) -> str:
    """The session API if it serves the UI; else the same API, UI added, on its own port."""
    if _serves_ui(api_url):
        return api_url
    port = free_port()
    args = [str(BIN / "gunicorn"), "-k", "gevent", "-w", "2", "-b", f"127.0.0.1:{port}"]
    args += ["--graceful-timeout", "5", "tests.e2e.test_ui:app_with_ui()"]
    stack.spawn("api-ui", args, ROUTER_WORKER_WAIT="3")
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(url + "/healthz"), 30, "api-ui", stack.tmp / "api-ui.log")
    return url


@pytest.fixture
def page(browser: Any, ui_url: str) -> Iterator[Any]:
    """A fresh page that records console errors and any request leaving the API's origin."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.problems = []
    host = ui_url.removeprefix("http://")
    page.on("pageerror", lambda exc: page.problems.append(f"page error: {exc}"))
    page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))

    def outside(req: Any) -> None:
        if not re.match(rf"^(http|ws)://{re.escape(host)}/", req.url) and not req.url.startswith(
            "data:"
        ):
            page.problems.append(f"request outside the API: {req.url}")

    page.on("request", outside)
    yield page
    context.close()


def shoot(page: Any, name: str) -> None:
    if UPDATE_SCREENSHOTS:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / name))


def ask(page: Any, prompt: str) -> Any:
    """Type a prompt, press Send; the new answer's element."""
    answers = page.locator(".msg.assistant")
    before = answers.count()
    page.fill("#prompt", prompt)
    page.click("#send")
    expect(answers).to_have_count(before + 1)
    return answers.nth(before)


def field(answer: Any, name: str) -> Any:
    return answer.locator(f'[data-field="{name}"]')


def text_length(answer: Any) -> int:
    return len(answer.locator(".answer-text").inner_text())


def test_ui_routes_serve_the_page_and_its_assets(ui_url: str) -> None:
    with httpx.Client(base_url=ui_url, timeout=10) as http:
        for path in ("/", "/ops"):
            resp = http.get(path)
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in resp.headers["content-security-policy"]
        js = http.get("/ui/app.js")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]
        assert http.get("/ui/style.css").headers["content-type"].startswith("text/css")
        assert http.get("/ui/nothing.js").status_code == 404
        assert http.get("/ui/../blueprints/ui.py").status_code == 404


def test_playground_streams_stops_and_ops_lists_the_worker(
    page: Any, ui_url: str, worker: Any
) -> None:
    page.goto(ui_url + "/")
    expect(page.locator("#ws-status")).to_have_attribute("data-state", "open")
    expect(page.locator("#model")).to_have_value("smollm2-135m")
    expect(page.locator("#model-info")).to_contain_text("available")

    # A short answer runs to the end, with its numbers.
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    short = ask(page, "What is the capital of France?")
    expect(short).to_have_attribute("data-status", "succeeded", timeout=30_000)
    assert text_length(short) > 0
    expect(field(short, "backend")).to_have_text("local")  # the backend serving local-mps
    expect(field(short, "model")).to_have_text("smollm2-135m")
    expect(field(short, "ttft")).to_have_text(re.compile(r"^\d+(\.\d)? m?s$"))
    expect(field(short, "tok/s")).to_have_text(re.compile(r"^\d+\.\d$"))
    expect(field(short, "cache")).to_have_text("-")  # x-cache does not exist yet
    expect(field(short, "finish")).to_have_text(re.compile("stop|length"))

    # A long one streams tokens until Stop, then ends cancelled, server side too.
    page.fill("#max-tokens", "512")  # the model's cap
    long = ask(page, LONG_PROMPT)
    expect(long).to_have_attribute("data-status", "running", timeout=30_000)
    enough = 150 if UPDATE_SCREENSHOTS else 5  # a few lines of poem for the picture
    page.wait_for_function(
        f"el => el.textContent.length > {enough}",
        arg=long.locator(".answer-text").element_handle(),
        timeout=60_000,
    )
    first = text_length(long)
    page.wait_for_function(
        f"el => el.textContent.length > {first}",
        arg=long.locator(".answer-text").element_handle(),
    )
    page.click("#stop")
    expect(long).to_have_attribute("data-status", "cancelled", timeout=10_000)
    stopped = text_length(long)
    job_id = long.get_attribute("data-job-id")
    assert job_id and job_id.startswith("job_")
    job = httpx.get(f"{ui_url}/v1/jobs/{job_id}", timeout=10).json()
    assert job["status"] == "cancelled"
    assert job["result"] is None
    page.wait_for_timeout(1000)
    assert text_length(long) == stopped  # nothing arrived after the stop
    expect(page.locator("#send")).to_be_enabled()
    shoot(page, "playground.png")

    # The ops tab: the worker, its backend, and both jobs, refreshed every 2 s.
    page.click('a[data-tab="ops"]')
    assert page.url == ui_url + "/ops"
    row = page.locator("#workers tbody tr", has=page.locator(".chip", has_text="local-mps"))
    expect(row.first).to_be_visible()
    expect(row.first.locator('[data-col="queues"]')).to_contain_text("local-mps")
    expect(row.first.locator('[data-col="models"]')).to_contain_text("smollm2-135m")
    expect(row.first).to_contain_text("live")
    local = page.locator('#backends tbody tr[data-backend="local"]')
    expect(local.locator(".chip")).to_have_text("local-mps")
    expect(local.locator(".badge")).to_have_text("closed")
    jobs = page.locator("#jobs tbody tr[data-job]")
    expect(jobs).to_have_count(2)
    expect(page.locator(f'#jobs tr[data-job="{job_id}"] .status')).to_have_text("cancelled")
    updated = page.locator("#ops-updated").inner_text()
    expect(page.locator("#ops-updated")).not_to_have_text(updated, timeout=5_000)
    expect(page.locator("#ops-error")).to_be_empty()
    shoot(page, "ops.png")

    # Opened directly, /ops shows the same view.
    page.goto(ui_url + "/ops")
    expect(page.locator("#view-ops")).to_be_visible()
    expect(page.locator(f'#jobs tr[data-job="{job_id}"]')).to_be_visible()
    assert page.problems == []


def test_playground_shows_openai_errors(page: Any, ui_url: str, worker: Any) -> None:
    page.goto(ui_url + "/")
    expect(page.locator("#model")).to_have_value("smollm2-135m")
    page.fill("#temperature", "3")
    answer = ask(page, "Hello")
    expect(answer).to_have_attribute("data-status", "failed")
    error = answer.locator(".error")
    expect(error).to_have_attribute("data-type", "invalid_request_error")
    expect(error).to_contain_text("temperature")
    expect(page.locator("#send")).to_be_enabled()
    assert page.problems == []
