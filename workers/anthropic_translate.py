"""OpenAI chat request -> Anthropic Messages request: pure translation, no I/O.

    build_request(job, env) -> AnthropicRequest(params for `messages.create`, json_tool)

Choices, documented once here:
- temperature: OpenAI allows 0..2, Anthropic 0..1. A value above 1 is rejected (400 naming
  `temperature`) rather than clamped: a silently different sampling is worse than an error.
- temperature and top_p travel in `extra_body`: SDK 2.x no longer lists them as arguments
  (newer models refuse them), but the API still takes them where a model allows them.
- seed is ignored (Anthropic has no seeded sampling). presence/frequency_penalty,
  logprobs/top_logprobs, logit_bias and n > 1 are rejected with a 400 naming the field;
  their no-op values (0, false, n=1) are accepted.
- response_format json_object: a system instruction to answer with one JSON object.
  json_schema: a tool named after the schema, forced with tool_choice; its tool_use input
  is streamed back as the message text (not as a tool call), as LiteLLM does. It cannot be
  combined with client tools (the forced tool would shut them out): 400.
- Empty assistant turns (no text, no tool calls) are dropped; consecutive same-role turns
  (and tool results, which Anthropic takes in a user turn) are merged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from workers.errors import InvalidRequestError
from workers.protocol import ChatJob
from workers.providers import allowed_extra, env_prefix

DEFAULT_MAX_TOKENS = 4096
JSON_INSTRUCTION = (
    "Respond only with a single valid JSON object. Do not add any text before or after it."
)
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+);base64,(.*)$", re.DOTALL)
JSON_SCHEMA_DESCRIPTION = "Answer with JSON that matches this schema."

#: OpenAI tool_choice strings -> Anthropic tool_choice types.
TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "any"}


@dataclass(frozen=True)
class AnthropicRequest:
    """Keyword arguments of `messages.create` (less `stream`), and the name of the forced
    tool whose input is the answer text when the client asked for a json_schema."""

    params: dict[str, Any]
    json_tool: str | None = None


def unsupported(message: str, param: str) -> InvalidRequestError:
    """A 400 naming the field the anthropic backend cannot honour."""
    return InvalidRequestError(f"The anthropic backend {message}", param=param)


def _given(value: Any) -> bool:
    """True when a field asks for something (its no-op values 0/False/None do not)."""
    return value is not None and value is not False and value != 0


#: Fields the Messages API cannot honour -> the test that the client really asked for one.
UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "presence_penalty": _given,
    "frequency_penalty": _given,
    "logprobs": _given,
    "top_logprobs": _given,
    "logit_bias": bool,
    "n": lambda n: n is not None and n != 1,
}


def build_request(job: ChatJob, env: Mapping[str, str]) -> AnthropicRequest:
    """The Messages API request for `job`; InvalidRequestError (400) for what it cannot say.
    Only the fields on the backend's pass-through list (providers.json) are read."""
    reject_unsupported(job)
    extra = allowed_extra(job)
    system, messages = translate_messages(job.messages)
    if not messages:
        raise unsupported("needs at least one user or assistant message.", "messages")
    s = job.sampling
    prefix = env_prefix(job.backend)
    params: dict[str, Any] = {
        "model": job.upstream_model,
        "max_tokens": s.max_tokens or int(env.get(f"{prefix}_MAX_TOKENS") or DEFAULT_MAX_TOKENS),
        "messages": messages,
    }
    if s.stop:
        params["stop_sequences"] = list(s.stop)
    if extra.get("user"):
        params["metadata"] = {"user_id": str(extra["user"])}
    extra_body = sampling_body(s.temperature, s.top_p)
    if extra_body:
        params["extra_body"] = extra_body
    params.update(translate_tools(extra))
    json_tool, format_params, instruction = translate_response_format(extra.get("response_format"))
    if json_tool and "tools" in params:
        raise unsupported("cannot combine a json_schema response_format with tools.",
                          "response_format")  # fmt: skip
    params.update(format_params)
    if instruction:
        system.append(instruction)
    if system:
        params["system"] = "\n\n".join(system)
    return AnthropicRequest(params, json_tool)


def reject_unsupported(job: ChatJob) -> None:
    """400 for each OpenAI field Anthropic has no equivalent of (see UNSUPPORTED)."""
    fields = {
        **job.extra,
        "presence_penalty": job.sampling.presence_penalty,
        "frequency_penalty": job.sampling.frequency_penalty,
    }
    for name, asked in UNSUPPORTED.items():
        if asked(fields.get(name)):
            raise unsupported(f"does not support `{name}`.", name)


def sampling_body(temperature: float | None, top_p: float | None) -> dict[str, float]:
    """temperature (rejected above Anthropic's 1.0) and top_p, for the request body."""
    body: dict[str, float] = {}
    if temperature is not None:
        if temperature > 1:
            raise unsupported(
                f"accepts `temperature` from 0 to 1 (Anthropic's range); got {temperature}.",
                "temperature",
            )
        body["temperature"] = temperature
    if top_p is not None:
        body["top_p"] = top_p
    return body


# -- messages ---------------------------------------------------------------------------
def translate_messages(messages: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts in order, alternating Anthropic turns) from OpenAI chat messages."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role in ("system", "developer"):
            text = plain_text(msg.get("content"), f"messages[{i}].content")
            if text:
                system.append(text)
            continue
        if role not in ROLES:
            raise unsupported(f"does not accept messages with role `{role}`.",
                              f"messages[{i}].role")  # fmt: skip
        anthropic_role, blocks_of = ROLES[role]
        blocks = blocks_of(msg, i)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == anthropic_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": anthropic_role, "content": blocks})
    return system, turns


def plain_text(content: Any, param: str) -> str:
    """The text of a system/developer/tool message: a string or a list of text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if part.get("type") != "text":
            raise unsupported(f"accepts only text parts here; got `{part.get('type')}`.",
                              f"{param}[{j}].type")  # fmt: skip
        texts.append(part.get("text") or "")
    return "\n".join(texts)


def content_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    """Anthropic text/image blocks of an OpenAI content (string or parts); empty text dropped."""
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(kind) or ""
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(image_block(part.get("image_url"), f"{param}[{j}].image_url"))
        else:
            raise unsupported(f"does not support content parts of type `{kind}`.",
                              f"{param}[{j}].type")  # fmt: skip
    return blocks


def image_block(image: Any, param: str) -> dict[str, Any]:
    """data: URLs -> a base64 image source; http(s) URLs -> a url source."""
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise unsupported("needs an image_url with a `url`.", param)
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = DATA_URL.match(url)
    if not match:
        raise unsupported("accepts images as http(s) URLs or base64 data: URLs.", param)
    media_type, data = match.groups()
    if media_type not in IMAGE_TYPES:
        raise unsupported(f"accepts images of types {', '.join(sorted(IMAGE_TYPES))}; "
                          f"got {media_type}.", param)  # fmt: skip
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _user_blocks(msg: dict[str, Any], i: int) -> list[dict[str, Any]]:
    return content_blocks(msg.get("content"), f"messages[{i}].content")


def _assistant_blocks(msg: dict[str, Any], i: int) -> list[dict[str, Any]]:
    blocks = content_blocks(msg.get("content"), f"messages[{i}].content")
    for j, call in enumerate(msg.get("tool_calls") or []):
        blocks.append(tool_use_block(call, f"messages[{i}].tool_calls[{j}]"))
    return blocks


def tool_use_block(call: dict[str, Any], param: str) -> dict[str, Any]:
    """An OpenAI assistant tool call as a tool_use block (its arguments JSON parsed)."""
    function = call.get("function") or {}
    if call.get("type", "function") != "function" or not function.get("name"):
        raise unsupported("accepts only function tool calls with a name.", param)
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise unsupported("needs tool call arguments that are a JSON object.",
                          f"{param}.function.arguments")  # fmt: skip
    return {"type": "tool_use", "id": call.get("id"), "name": function["name"], "input": arguments}


def _tool_blocks(msg: dict[str, Any], i: int) -> list[dict[str, Any]]:
    if not msg.get("tool_call_id"):
        raise unsupported("needs `tool_call_id` on tool messages.", f"messages[{i}].tool_call_id")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": msg["tool_call_id"]}
    text = plain_text(msg.get("content"), f"messages[{i}].content")
    if text:
        block["content"] = text
    return [block]


#: OpenAI role -> (Anthropic role, the blocks of one message).
ROLES: dict[str, tuple[str, Callable[[dict[str, Any], int], list[dict[str, Any]]]]] = {
    "user": ("user", _user_blocks),
    "assistant": ("assistant", _assistant_blocks),
    "tool": ("user", _tool_blocks),
}


# -- tools and response formats ---------------------------------------------------------
def translate_tools(extra: dict[str, Any]) -> dict[str, Any]:
    """`tools` and `tool_choice` params from OpenAI's tools/tool_choice/parallel_tool_calls."""
    tools = [anthropic_tool(t, f"tools[{k}]") for k, t in enumerate(extra.get("tools") or [])]
    choice = extra.get("tool_choice")
    if not tools:
        if choice not in (None, "none"):
            raise unsupported("got `tool_choice` without `tools`.", "tool_choice")
        return {}
    params: dict[str, Any] = {"tools": tools}
    anthropic_choice = tool_choice(choice)
    if extra.get("parallel_tool_calls") is False and anthropic_choice["type"] != "none":
        anthropic_choice["disable_parallel_tool_use"] = True
    if choice is not None or len(anthropic_choice) > 1:
        params["tool_choice"] = anthropic_choice
    return params


def anthropic_tool(tool: dict[str, Any], param: str) -> dict[str, Any]:
    """An OpenAI function tool as an Anthropic tool (name, description, input_schema)."""
    function = tool.get("function") or {}
    if tool.get("type") != "function" or not function.get("name"):
        raise unsupported("accepts only function tools with a name.", param)
    out = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def tool_choice(choice: Any) -> dict[str, Any]:
    """auto/none/required/{"type":"function","function":{"name"}} -> auto/none/any/tool."""
    if choice is None:
        return {"type": "auto"}
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        return {"type": TOOL_CHOICES[choice]}
    if isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
        return {"type": "tool", "name": choice["function"]["name"]}
    raise unsupported(f"does not understand tool_choice {choice!r}.", "tool_choice")


def translate_response_format(fmt: Any) -> tuple[str | None, dict[str, Any], str | None]:
    """(the forced tool's name or None, params to add, a system instruction or None)."""
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None, {}, None
    if kind == "json_object":
        return None, {}, JSON_INSTRUCTION
    if kind != "json_schema":
        raise unsupported(f"does not support response_format type `{kind}`.",
                          "response_format.type")  # fmt: skip
    spec = fmt.get("json_schema") or {}
    schema = spec.get("schema") or {"type": "object", "properties": {}}
    if schema.get("type") != "object":
        raise unsupported("needs a json_schema whose top-level type is `object`.",
                          "response_format.json_schema.schema")  # fmt: skip
    name = spec.get("name") or "json_response"
    tool = {
        "name": name,
        "description": spec.get("description") or JSON_SCHEMA_DESCRIPTION,
        "input_schema": schema,
    }
    return name, {"tools": [tool], "tool_choice": {"type": "tool", "name": name}}, None
