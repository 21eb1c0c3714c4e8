"""OpenAI chat requests as Gemini `generateContent` requests: pure functions, no HTTP.

    contents, config = gemini_request(job)   # InvalidRequestError (400), naming the field,
                                             # for what Gemini cannot honour

Messages become turns (system/developer -> system_instruction, assistant -> "model",
tool results -> functionResponse parts named after the call they answer), tools become
one Tool of function declarations, sampling and response_format the generation config.
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from google.genai import types

from workers.errors import InvalidRequestError
from workers.protocol import ChatJob
from workers.providers import allowed_extra

#: Gemini 3 rejects a replayed functionCall without the signature it came with; OpenAI
#: clients cannot carry one, so replayed calls get Google's documented bypass value.
SKIP_SIGNATURE = b"skip_thought_signature_validator"

TOOL_CHOICE_MODES = {
    "auto": types.FunctionCallingConfigMode.AUTO,
    "none": types.FunctionCallingConfigMode.NONE,
    "required": types.FunctionCallingConfigMode.ANY,
}

AUDIO_FORMATS = {"wav": "audio/wav", "mp3": "audio/mp3"}

#: OpenAI fields Gemini has no equivalent for: refused (400) when given a non-empty value.
UNSUPPORTED_FIELDS = {
    "logit_bias": "Gemini has no logit bias",
    "functions": "send `tools` instead of the legacy `functions`",
    "function_call": "send `tool_choice` instead of the legacy `function_call`",
    "audio": "audio output is not available through this backend",
    "web_search_options": "web search is not available through this backend",
}


def invalid(backend: str, what: str, param: str) -> InvalidRequestError:
    """A 400 naming the backend and the offending request field."""
    return InvalidRequestError(
        f"The `{backend}` backend (Gemini) cannot accept this request: {what}", param=param
    )


# -- request ---------------------------------------------------------------------------


def gemini_request(job: ChatJob) -> tuple[list[types.Content], types.GenerateContentConfig]:
    """The `contents` and `config` of `generate_content_stream` for `job`; only the fields on
    the backend's pass-through list (providers.json) are read."""
    backend = job.backend
    _reject_unsupported(job.extra, backend)
    extra = allowed_extra(job)
    contents, system = translate_messages(job.messages, backend)
    tools, tool_config = translate_tools(extra, backend)
    s = job.sampling
    config = types.GenerateContentConfig(
        system_instruction=system,
        tools=tools,
        tool_config=tool_config,
        max_output_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        stop_sequences=list(s.stop) or None,
        seed=s.seed,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        # the worker retries and streams itself: no SDK-side function calling or re-sends
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        automatic_continuation=False,
        **_response_format(extra.get("response_format"), backend),
        **_logprobs(extra, backend),
    )
    return contents, config


def _reject_unsupported(extra: dict[str, Any], backend: str) -> None:
    for name, why in UNSUPPORTED_FIELDS.items():
        if extra.get(name):
            raise invalid(backend, f"`{name}` is not supported ({why}).", name)
    modalities = extra.get("modalities") or ["text"]
    if any(m != "text" for m in modalities):
        raise invalid(backend, "only text output is supported.", "modalities")


def _response_format(fmt: Any, backend: str) -> dict[str, Any]:
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if kind in (None, "text"):
        return {}
    if kind == "json_object":
        return {"response_mime_type": "application/json"}
    if kind == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise invalid(
                backend,
                "json_schema needs a `schema` object.",
                "response_format.json_schema.schema",
            )
        return {"response_mime_type": "application/json", "response_json_schema": schema}
    raise invalid(backend, f"unknown response_format type {kind!r}.", "response_format.type")


def _logprobs(extra: dict[str, Any], backend: str) -> dict[str, Any]:
    if not extra.get("logprobs"):
        return {}
    top = extra.get("top_logprobs")
    if top is not None and not (isinstance(top, int) and 0 <= top <= 20):
        raise invalid(backend, "top_logprobs must be an integer from 0 to 20.", "top_logprobs")
    return {"response_logprobs": True, "logprobs": top}


# -- messages --------------------------------------------------------------------------


@dataclass
class _Conversation:
    """Gemini turns being built: consecutive same-role turns merge into one."""

    backend: str
    turns: list[types.Content] = field(default_factory=list)
    system: list[types.Part] = field(default_factory=list)
    call_names: dict[str, str] = field(default_factory=dict)  # tool_call id -> name

    def add(self, role: str, parts: list[types.Part]) -> None:
        if not parts:
            return
        last = self.turns[-1] if self.turns else None
        if last is not None and last.role == role and last.parts is not None:
            last.parts.extend(parts)
        else:
            self.turns.append(types.Content(role=role, parts=parts))


def translate_messages(
    messages: list[dict[str, Any]], backend: str
) -> tuple[list[types.Content], types.Content | None]:
    """OpenAI messages -> (Gemini contents, system_instruction)."""
    conv = _Conversation(backend)
    for i, msg in enumerate(messages):
        handler = _ROLES.get(str(msg.get("role")))
        if handler is None:
            raise invalid(
                backend,
                f"messages[{i}] has role {msg.get('role')!r}, which it does not support.",
                f"messages[{i}].role",
            )
        handler(conv, msg, f"messages[{i}]")
    if not conv.turns:
        raise invalid(
            backend, "it needs at least one user or assistant message with content.", "messages"
        )
    system = types.Content(parts=conv.system) if conv.system else None
    return conv.turns, system


def _system(conv: _Conversation, msg: dict[str, Any], where: str) -> None:
    conv.system.extend(types.Part(text=t) for t in _texts(msg.get("content"), conv, where))


def _user(conv: _Conversation, msg: dict[str, Any], where: str) -> None:
    content = msg.get("content")
    if isinstance(content, list):
        parts = [
            _user_part(p, conv.backend, f"{where}.content[{j}]") for j, p in enumerate(content)
        ]
        conv.add("user", [p for p in parts if p is not None])
    else:
        conv.add("user", [types.Part(text=t) for t in _texts(content, conv, where)])


def _assistant(conv: _Conversation, msg: dict[str, Any], where: str) -> None:
    parts = [types.Part(text=t) for t in _texts(msg.get("content"), conv, where)]
    for j, call in enumerate(msg.get("tool_calls") or []):
        part = _function_call(call, conv, f"{where}.tool_calls[{j}]")
        if j == 0 and part.thought_signature is None:
            part.thought_signature = SKIP_SIGNATURE  # validated on a step's first call
        parts.append(part)
    conv.add("model", parts)


def _tool(conv: _Conversation, msg: dict[str, Any], where: str) -> None:
    call_id = msg.get("tool_call_id")
    name = conv.call_names.get(str(call_id))
    if name is None:
        raise invalid(
            conv.backend,
            f"{where} answers tool_call_id {call_id!r}, which no earlier assistant tool_call has.",
            f"{where}.tool_call_id",
        )
    text = "".join(_texts(msg.get("content"), conv, where))
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    response = parsed if isinstance(parsed, dict) else {"result": text}
    part = types.Part(function_response=types.FunctionResponse(name=name, response=response))
    conv.add("user", [part])


_ROLES: dict[str, Callable[[_Conversation, dict[str, Any], str], None]] = {
    "system": _system,
    "developer": _system,
    "user": _user,
    "assistant": _assistant,
    "tool": _tool,
}


def _texts(content: Any, conv: _Conversation, where: str) -> list[str]:
    """The non-empty texts of a string or a list of text (or refusal) parts."""
    if content is None or isinstance(content, str):
        return [content] if content else []
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("text", "refusal"):
            raise invalid(
                conv.backend,
                f"{where} may only hold text parts here, not {kind!r}.",
                f"{where}.content[{j}].type",
            )
        if part.get(kind):
            texts.append(str(part[kind]))
    return texts


def _function_call(call: dict[str, Any], conv: _Conversation, where: str) -> types.Part:
    fn = call.get("function") or {}
    name, raw = fn.get("name"), fn.get("arguments") or "{}"
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        args = None
    if not name or not isinstance(args, dict):
        raise invalid(
            conv.backend,
            f"{where} needs a function name and JSON-object arguments.",
            f"{where}.function",
        )
    if call.get("id"):
        conv.call_names[str(call["id"])] = str(name)
    part = types.Part(function_call=types.FunctionCall(name=name, args=args))
    signature = ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
    if signature:  # the field Google's own OpenAI endpoint round-trips signatures in
        part.thought_signature = _b64(signature, conv.backend, f"{where}.extra_content")
    return part


# -- user content parts ----------------------------------------------------------------


def _user_part(part: Any, backend: str, where: str) -> types.Part | None:
    kind = part.get("type") if isinstance(part, dict) else None
    build = _PARTS.get(str(kind))
    if build is None:
        raise invalid(backend, f"content part type {kind!r} is not supported.", f"{where}.type")
    return build(part, backend, where)


def _text_part(part: dict[str, Any], backend: str, where: str) -> types.Part | None:
    return types.Part(text=str(part["text"])) if part.get("text") else None


def _image_part(part: dict[str, Any], backend: str, where: str) -> types.Part:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    where = f"{where}.image_url"
    if not isinstance(url, str) or not url:
        raise invalid(backend, "an image_url part needs a `url`.", where)
    if url.startswith("data:"):
        return _data_url(url, backend, where)
    if urlparse(url).scheme not in ("http", "https"):
        raise invalid(backend, "image URLs must be data:, http: or https: URLs.", where)
    mime, _ = mimetypes.guess_type(urlparse(url).path)
    if not mime:
        raise invalid(
            backend,
            f"cannot tell the media type of {url!r} from its name; send the image as a data: URL.",
            where,
        )
    return types.Part(file_data=types.FileData(file_uri=url, mime_type=mime))


def _audio_part(part: dict[str, Any], backend: str, where: str) -> types.Part:
    audio = part.get("input_audio") or {}
    mime = AUDIO_FORMATS.get(str(audio.get("format")))
    if mime is None:
        raise invalid(
            backend,
            f"input_audio format must be one of {sorted(AUDIO_FORMATS)}.",
            f"{where}.input_audio.format",
        )
    data = _b64(audio.get("data"), backend, f"{where}.input_audio.data")
    return types.Part(inline_data=types.Blob(data=data, mime_type=mime))


def _file_part(part: dict[str, Any], backend: str, where: str) -> types.Part:
    url = (part.get("file") or {}).get("file_data")
    if not isinstance(url, str) or not url.startswith("data:"):
        raise invalid(
            backend,
            "a file part must carry its bytes as a data: URL in "
            "`file_data` (file ids are not supported).",
            f"{where}.file",
        )
    return _data_url(url, backend, f"{where}.file.file_data")


_PARTS: dict[str, Callable[[dict[str, Any], str, str], types.Part | None]] = {
    "text": _text_part,
    "image_url": _image_part,
    "input_audio": _audio_part,
    "file": _file_part,
}


def _data_url(url: str, backend: str, where: str) -> types.Part:
    head, sep, payload = url.partition(",")
    mime = head[len("data:") :].split(";")[0]
    if not sep or not head.endswith(";base64") or not mime:
        raise invalid(backend, "data: URLs must look like data:<type>;base64,<data>.", where)
    return types.Part(inline_data=types.Blob(data=_b64(payload, backend, where), mime_type=mime))


def _b64(text: Any, backend: str, where: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(backend, "the data is not valid base64.", where) from None


# -- tools -----------------------------------------------------------------------------


def translate_tools(
    extra: dict[str, Any], backend: str
) -> tuple[list[types.ToolUnion] | None, types.ToolConfig | None]:
    """OpenAI `tools` + `tool_choice` -> one Gemini Tool of function declarations + config."""
    declarations = []
    for i, tool in enumerate(extra.get("tools") or []):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type") != "function" or not fn.get("name"):
            raise invalid(backend, "only function tools with a name are supported.", f"tools[{i}]")
        declarations.append(
            types.FunctionDeclaration(
                name=fn["name"],
                description=fn.get("description"),
                parameters_json_schema=fn.get("parameters") or None,
            )
        )
    choice = extra.get("tool_choice")
    if not declarations:
        if choice not in (None, "auto", "none"):
            raise invalid(backend, "tool_choice needs `tools`.", "tool_choice")
        return None, None
    names = [d.name for d in declarations if d.name]
    tool_config = _tool_choice(choice, names, backend) if choice is not None else None
    return [types.Tool(function_declarations=declarations)], tool_config


def _tool_choice(choice: Any, names: list[str], backend: str) -> types.ToolConfig:
    allowed = None
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if name not in names:
            raise invalid(
                backend,
                f"tool_choice names {name!r}, which is not among the tools.",
                "tool_choice.function.name",
            )
        mode, allowed = types.FunctionCallingConfigMode.ANY, [name]
    elif isinstance(choice, str) and choice in TOOL_CHOICE_MODES:
        mode = TOOL_CHOICE_MODES[choice]
    else:
        raise invalid(
            backend, "tool_choice must be auto, none, required or a named function.", "tool_choice"
        )
    config = types.FunctionCallingConfig(mode=mode, allowed_function_names=allowed)
    return types.ToolConfig(function_calling_config=config)
