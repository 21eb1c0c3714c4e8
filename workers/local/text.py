"""Text around the model: OpenAI messages in, incremental detokenization with stop strings
out, and a clear refusal of request features a plain local model cannot honour."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workers.errors import InvalidRequestError
from workers.protocol import ChatJob


@dataclass
class Decoder:
    """Turns token ids into text deltas, holding back what could still become a stop string.

    Decodes a sliding window of ids per token, as vLLM does (the text of the window minus
    the text of its already-read prefix), so a long answer costs O(1) per token, and
    tokenizers that drop a leading space at a slice boundary still give the right text.
    """

    tokenizer: Any
    stops: tuple[str, ...]
    ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0
    prefix: int = 0  # window start
    read: int = 0  # ids up to here are already in `text`

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token; return (new text safe to send, hit a stop string)."""
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        window = decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(window) <= len(before) or window.endswith("\ufffd"):
            return "", False  # no new character yet (an incomplete UTF-8 sequence)
        self.text += window[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        for stop in self.stops:
            at = self.text.find(stop, max(0, self.sent - len(stop) + 1))
            if at != -1:
                return self._take(at), True
        return self._take(len(self.text) - self._held()), False

    def _held(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.text)), best, -1):
                if self.text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        upto = max(self.sent, upto)
        delta, self.sent = self.text[self.sent : upto], upto
        return delta


#: request fields a plain local model cannot honour, and the values that are harmless
_UNSUPPORTED: dict[str, tuple[object, ...]] = {
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none", "auto"),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "response_format": (None, {"type": "text"}),
    "audio": (None,),
    "prediction": (None,),
}


def reject_unsupported(job: ChatJob) -> None:
    """A clear 400 instead of silently ignoring a feature the client relies on."""
    for name, harmless in _UNSUPPORTED.items():
        if job.extra.get(name) not in harmless:
            raise InvalidRequestError(
                f"The model `{job.model}` does not support `{name}`.", param=name
            )


def plain_message(message: Mapping[str, Any], model: str) -> dict[str, str]:
    """OpenAI message -> {role, content} text the chat template understands."""
    role = message.get("role", "user")
    role = "system" if role == "developer" else role
    content = message.get("content")
    if content is None:
        return {"role": role, "content": ""}
    if isinstance(content, str):
        return {"role": role, "content": content}
    texts = []
    for part in content:
        if part.get("type") != "text":
            raise InvalidRequestError(
                f"The model `{model}` accepts text only; got a `{part.get('type')}` part.",
                param="messages",
            )
        texts.append(part.get("text", ""))
    return {"role": role, "content": "\n".join(texts)}
