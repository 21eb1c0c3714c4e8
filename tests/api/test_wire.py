"""OpenAI wire bodies with tool calls and logprobs, and the resync of restarted streams."""

from __future__ import annotations

import pytest

from api.schemas import chunk_body, completion_body
from api.streaming import Resync, token_delta
from tasks.events import StreamEvent, token_fields
from workers.errors import UpstreamError
from workers.protocol import Usage

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def test_tool_call_only_completion_has_null_content() -> None:
    body = completion_body("c", 1, "m", "", "tool_calls", Usage(3, 4), [CALL])
    message = body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": None, "refusal": None, "tool_calls": [CALL]}
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_plain_completion_is_unchanged() -> None:
    body = completion_body("c", 1, "m", "hi", "stop", Usage(1, 1))
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hi", "refusal": None}
    assert body["choices"][0]["logprobs"] is None


def test_logprobs_in_completion_and_chunk() -> None:
    lp = [{"token": "hi", "logprob": -0.5, "bytes": [104, 105], "top_logprobs": []}]
    body = completion_body("c", 1, "m", "hi", "stop", Usage(1, 1), None, lp)
    assert body["choices"][0]["logprobs"] == {"content": lp, "refusal": None}
    chunk = chunk_body("c", 1, "m", {"content": "hi"}, None, False, lp)
    assert chunk["choices"][0]["logprobs"] == {"content": lp, "refusal": None}


def tok(seq: int, delta: str = "", tools=None) -> StreamEvent:  # type: ignore[no-untyped-def]
    return StreamEvent.decode(f"1-{seq}", token_fields(seq, delta, tools))


def test_token_delta_carries_text_and_fragments() -> None:
    frag = [{"index": 0, "function": {"arguments": "{}"}}]
    assert token_delta(tok(0, "a", frag), Resync()) == {"content": "a", "tool_calls": frag}
    assert token_delta(tok(0, ""), Resync()) == {}


def test_restart_after_a_tool_call_was_sent_is_divergence() -> None:
    r = Resync()
    token_delta(tok(0, tools=[{"index": 0, "id": "call_1"}]), r)
    r.restart()
    with pytest.raises(UpstreamError):
        token_delta(tok(0, tools=[{"index": 0, "id": "call_9"}]), r)


def test_restart_replays_text_then_allows_new_tool_calls() -> None:
    r = Resync()
    assert r.feed("Hello") == "Hello"
    r.restart()
    assert r.feed("Hel") == "" and r.feed("lo") == ""
    delta = token_delta(tok(2, tools=[{"index": 0, "id": "call_1"}]), r)
    assert delta == {"tool_calls": [{"index": 0, "id": "call_1"}]}
