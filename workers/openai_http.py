"""A lean, pooled HTTP client for one call: a streamed OpenAI-compatible chat completion.

The `openai` SDK costs a provider worker more than everything else it does per request:
its request builder and transforms, httpx2's connection pool, a pydantic model per chunk
(bench/overhead.py; the profile is in docs/benchmarks.md). The chat call is one POST and a stream
of server-sent events, so it is made here with urllib3 (pooled connections, per endpoint)
and orjson, and its failures are raised as the few facts the worker's error table needs:

    UpstreamStatus   the upstream answered non-2xx (status, parsed error body, headers)
    UpstreamTimeout  no connection or no bytes within the connect / read timeout
    UpstreamBroken   connection refused, reset or cut mid-stream; an unreadable event
    UpstreamStreamError  an error payload inside a 200 stream

Proxies come from HTTP(S)_PROXY / NO_PROXY, CA certificates from certifi, as with httpx.
"""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import certifi
import orjson
import urllib3
from urllib3.exceptions import (
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    TimeoutError,
)

USER_AGENT = "inference-router/0.1"
POOL_SIZE = 256  # idle keep-alive connections kept per upstream host


class UpstreamFailure(Exception):
    """Base of what the client raises; never carries the key."""


class UpstreamStatus(UpstreamFailure):
    """A non-2xx answer. `error` is the body's `error` object (or the whole JSON body, or
    the text when it is not JSON); `message` the fallback text, as the SDK words it."""

    def __init__(self, status: int, error: object, message: str, headers: Mapping[str, str]):
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers

    def field(self, name: str) -> str | None:
        value = self.error.get(name) if isinstance(self.error, dict) else None
        return str(value) if value is not None else None


class UpstreamTimeout(UpstreamFailure):
    pass


class UpstreamBroken(UpstreamFailure):
    pass


class UpstreamStreamError(UpstreamFailure):
    """An error payload in a 200 stream: `error` is its `error` object, or the flat body."""

    def __init__(self, error: dict[str, Any]):
        message = error.get("message")
        if not isinstance(message, str) or not message:
            message = "An error occurred during streaming"
        super().__init__(message)
        self.error, self.message = error, message


@dataclass(frozen=True)
class Timeouts:
    read: float
    connect: float


class ChatClient:
    """Streams chat completions from one upstream (base URL, key, static headers); safe to
    share between threads and greenlets."""

    def __init__(
        self, base_url: str, api_key: str, headers: Mapping[str, str], timeout: Timeouts
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.timeout = timeout
        self.headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            **headers,
        }
        self._urllib3_timeout = urllib3.Timeout(connect=timeout.connect, read=timeout.read)
        self._pool = _pool_for(self.url)  # keep-alive connections, this client's own

    def stream(self, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> ChatStream:
        """POST the request; returns the open event stream, or raises an UpstreamFailure."""
        try:
            resp = self._pool.urlopen(
                "POST",
                self.url,
                body=orjson.dumps(body),
                headers={**self.headers, **(headers or {})},
                retries=False,
                redirect=False,
                preload_content=False,
                timeout=self._urllib3_timeout,
            )
        except NewConnectionError as exc:  # refused, unresolvable (a ConnectTimeoutError too)
            raise UpstreamBroken(str(exc)) from None
        except TimeoutError as exc:
            raise UpstreamTimeout(str(exc)) from None
        except HTTPError as exc:
            raise UpstreamBroken(str(getattr(exc, "reason", None) or exc)) from None
        if resp.status >= 300:
            raise _status_failure(resp)
        return ChatStream(resp)

    def close(self) -> None:
        self._pool.clear()


class ChatStream:
    """The JSON payloads of one response's server-sent events, up to `[DONE]`, and None
    for each comment: a keep-alive (OpenRouter's `: OPENROUTER PROCESSING`), handed on so
    that whoever reads checks its deadline and cancel flag while the upstream sends nothing
    else."""

    def __init__(self, resp: urllib3.BaseHTTPResponse) -> None:
        self.resp = resp
        self._ended = False  # read to the end of the response: the connection can be reused

    def events(self) -> Iterator[dict[str, Any] | None]:
        data = self._data()
        for item in data:
            if item is None:
                yield None  # a keep-alive comment
                continue
            if item.startswith(b"[DONE]"):
                for _ in data:  # the response ends right after; read that, as the SDK did
                    pass
                return
            try:
                body = orjson.loads(item)
            except orjson.JSONDecodeError as exc:  # the upstream's fault, not ours
                raise UpstreamBroken(f"unreadable event from the upstream: {exc}") from None
            if not isinstance(body, dict):
                continue
            if body.get("error") or body.get("object") == "error":  # also older vLLM's flat one
                raise UpstreamStreamError(body["error"] if body.get("error") else body)
            yield body

    def _data(self) -> Iterator[bytes | None]:
        """The `data` of each event (lines joined by newline), None for each comment line;
        other fields skipped."""
        buffer, data = b"", list[bytes]()
        for block in self._blocks():
            buffer += block
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                line = line.rstrip(b"\r")
                if not line:
                    if data:
                        yield b"\n".join(data)
                        data = []
                elif line.startswith(b"data:"):
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
                elif line.startswith(b":"):
                    yield None
        if buffer.startswith(b"data:"):
            data.append(buffer[5:].strip())
        if data:
            yield b"\n".join(data)

    def _blocks(self) -> Iterator[bytes]:
        try:
            while block := self.resp.read1(65536):
                yield block
            self._ended = True
        except (ReadTimeoutError, TimeoutError) as exc:
            raise UpstreamTimeout(str(exc)) from None
        except (ProtocolError, HTTPError, OSError) as exc:
            raise UpstreamBroken(str(exc)) from None

    def close(self) -> None:
        """Give the connection back when the stream was read to its end; otherwise drop it,
        so that the upstream sees the disconnect and stops generating."""
        if self._ended:
            self.resp.release_conn()
        else:
            self.resp.close()


def _status_failure(resp: urllib3.BaseHTTPResponse) -> UpstreamStatus:
    """As the SDK reads an error answer: JSON when it parses, the text otherwise."""
    try:
        text = resp.read().decode("utf-8", "replace").strip()
    except (HTTPError, OSError):
        text = ""
    finally:
        resp.release_conn()
    message = f"Error code: {resp.status}"
    body: object = text
    with contextlib.suppress(orjson.JSONDecodeError):
        body = orjson.loads(text)
    error = body.get("error", body) if isinstance(body, dict) else body
    inner = error.get("message") if isinstance(error, dict) else None
    if isinstance(inner, str) and inner:
        message += f" - {inner}"
    return UpstreamStatus(resp.status, error, message, dict(resp.headers))


def _pool_for(url: str) -> urllib3.PoolManager:
    """A pool manager for `url`, through the proxy the environment names for it, if any."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and urllib.request.proxy_bypass(parts.hostname or ""):
        proxy = None
    options: dict[str, Any] = {"maxsize": POOL_SIZE, "block": False}
    if parts.scheme == "https":
        options["ca_certs"] = certifi.where()
    return urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
