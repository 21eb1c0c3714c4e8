"""A small OpenAI-compatible upstream for benchmarks: it answers `/v1/chat/completions`
(JSON, or SSE ending in `[DONE]`, with the usage chunk when asked) after a set latency,
with N tokens "tok0 tok1 …" optionally spaced in time.

    .venv/bin/python bench/mock_upstream.py --port 9001 [--latency-ms 0] [--tokens 16]

The knobs can also be changed while it runs, so one mock serves every scenario of
bench/overhead.py and the router, LiteLLM and direct calls all hit the same process:

    POST /mock/config {"latency_ms": 1500, "tokens": 16, "interval_ms": 0}
    GET  /mock/stats  -> requests, streams, in_flight

aiohttp, no access log, the open-file limit raised to its hard limit so thousands of
connections are fine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Any

from aiohttp import web

FINGERPRINT = "fp_mock"


class Mock:
    def __init__(self, latency_ms: float, tokens: int, interval_ms: float) -> None:
        self.configure({"latency_ms": latency_ms, "tokens": tokens, "interval_ms": interval_ms})
        self.seq = 0
        self.stats = {"requests": 0, "streams": 0, "in_flight": 0}

    def configure(self, knobs: dict[str, Any]) -> None:
        self.latency = float(knobs.get("latency_ms", 0)) / 1000
        self.interval = float(knobs.get("interval_ms", 0)) / 1000
        n = int(knobs.get("tokens", 16))
        self.words = ["tok0"] + [f" tok{i}" for i in range(1, n)] if n > 0 else []

    async def set_config(self, request: web.Request) -> web.Response:
        self.configure(await request.json())
        return web.json_response({"ok": True})

    async def models(self, _: web.Request) -> web.Response:
        data = [{"id": "mock", "object": "model", "created": 0, "owned_by": "mock"}]
        return web.json_response({"object": "list", "data": data})

    async def get_stats(self, _: web.Request) -> web.Response:
        return web.json_response(self.stats)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.stats["requests"] += 1
        try:
            req = await request.json()
            if not isinstance(req, dict) or not isinstance(req.get("messages"), list):
                raise ValueError("'messages' must be a list")
        except (ValueError, TypeError) as exc:
            err = {"message": f"invalid request: {exc}", "type": "invalid_request_error"}
            return web.json_response({"error": {**err, "param": None, "code": None}}, status=400)
        n, finish = len(self.words), "stop"
        limit = req.get("max_completion_tokens") or req.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < n:
            n, finish = limit, "length"
        self.seq += 1
        prompt = sum(len(str(m.get("content", "")).split()) for m in req["messages"])
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
        head = {"id": f"chatcmpl-mock-{self.seq}", "created": int(time.time())}
        head["model"] = req.get("model") or "mock"
        self.stats["in_flight"] += 1
        try:
            if req.get("stream"):
                self.stats["streams"] += 1
                opts = req.get("stream_options") or {}
                return await self.stream(request, head, n, finish, usage, opts)
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            message = {"role": "assistant", "content": "".join(self.words[:n]), "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            body = {**head, "object": "chat.completion", "system_fingerprint": FINGERPRINT}
            return web.json_response({**body, "choices": [choice], "usage": usage})
        finally:
            self.stats["in_flight"] -= 1

    async def stream(
        self,
        request: web.Request,
        head: dict[str, Any],
        n: int,
        finish: str,
        usage: dict[str, int],
        opts: dict[str, Any],
    ) -> web.StreamResponse:
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        resp = web.StreamResponse(status=200, headers=headers)
        with_usage = bool(opts.get("include_usage"))
        base = {**head, "object": "chat.completion.chunk", "system_fingerprint": FINGERPRINT}

        def chunk(delta: dict[str, Any], fin: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": fin}
            extra = {"usage": None} if with_usage else {}
            return b"data: " + json.dumps({**base, "choices": [choice], **extra}).encode() + b"\n\n"

        if self.latency > 0:
            await asyncio.sleep(self.latency)
        await resp.prepare(request)
        parts = [chunk({"role": "assistant", "content": "", "refusal": None})]
        for i, word in enumerate(self.words[:n]):
            if self.interval > 0:
                if parts:
                    await resp.write(b"".join(parts))
                    parts = []
                if i:
                    await asyncio.sleep(self.interval)
            parts.append(chunk({"content": word}))
        parts.append(chunk({}, finish))
        if with_usage:
            body = {**base, "choices": [], "usage": usage}
            parts.append(b"data: " + json.dumps(body).encode() + b"\n\n")
        parts.append(b"data: [DONE]\n\n")
        await resp.write(b"".join(parts))
        await resp.write_eof()
        return resp


def make_app(mock: Mock) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    for prefix in ("/v1", ""):
        app.router.add_get(prefix + "/models", mock.models)
        app.router.add_post(prefix + "/chat/completions", mock.chat)
    app.router.add_get("/mock/stats", mock.get_stats)
    app.router.add_post("/mock/config", mock.set_config)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--interval-ms", type=float, default=0.0)
    args = p.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    mock = Mock(args.latency_ms, args.tokens, args.interval_ms)
    print(f"mock upstream on http://{args.host}:{args.port}/v1", flush=True)
    web.run_app(
        make_app(mock),
        host=args.host,
        port=args.port,
        access_log=None,
        backlog=8192,
        print=None,
        keepalive_timeout=300,
    )


if __name__ == "__main__":
    main()
