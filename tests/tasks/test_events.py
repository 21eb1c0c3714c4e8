"""Token events carrying tool-call fragments and logprobs, and the Transcript that folds them."""

from __future__ import annotations

from tasks.events import StreamEvent, Transcript, token_fields
from tasks.keys import Event

CALL_START = [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}}]
CALL_MORE = [{"index": 0, "function": {"arguments": '{"city": '}}]
CALL_END = [{"index": 0, "function": {"arguments": '"Paris"}'}}]
SECOND = [
    {"index": 1, "id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}}
]


def event(seq: int, delta: str = "", tools=None, logprobs=None) -> StreamEvent:  # type: ignore[no-untyped-def]
    return StreamEvent.decode(f"1-{seq}", token_fields(seq, delta, tools, logprobs))


def test_plain_token_fields_stay_as_they_were() -> None:
    assert token_fields(3, "hi") == {"type": "token", "seq": "3", "delta": "hi"}


def test_tool_calls_and_logprobs_round_trip_through_stream_fields() -> None:
    lp = [{"token": "hi", "logprob": -0.1, "bytes": [104, 105], "top_logprobs": []}]
    ev = event(0, "hi", CALL_START, lp)
    assert ev.tool_calls == CALL_START and ev.logprobs == lp
    assert ev.payload() == {"seq": 0, "delta": "hi", "tool_calls": CALL_START, "logprobs": lp}


def test_transcript_merges_fragments_into_whole_calls() -> None:
    t = Transcript()
    t.extend(
        [
            event(0, tools=CALL_START),
            event(1, tools=CALL_MORE),
            event(2, tools=SECOND),
            event(3, tools=CALL_END),
        ]
    )
    assert t.tools.calls() == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]
    assert t.text == ""


def test_restart_drops_the_previous_attempts_calls_and_logprobs() -> None:
    t = Transcript()
    t.add(event(0, "a", CALL_START, [{"token": "a", "logprob": 0.0}]))
    t.add(StreamEvent("2-0", Event.RESTART, attempt=2))
    t.add(event(1, "b"))
    assert (t.text, t.tools.calls(), t.logprobs) == ("b", [], [])
