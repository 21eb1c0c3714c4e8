"""The typed parts of an OpenAI chat completion request: messages (told apart by `role`),
content parts, tool calls, tools, tool choice and response formats (by `type`). Tagged
unions with no per-item Python validators, so pydantic checks a request in one linear pass
in its core; lists are capped so that no request is long to check (docs/api.md#limits).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_PARTS = 256  # content parts per message
MAX_TOOLS = 128  # tools (or legacy functions), and tool calls in one message


class Shape(BaseModel):
    """A JSON object of the request: typed where workers rely on it, other keys kept."""

    model_config = ConfigDict(extra="allow", strict=True)


Name = Annotated[str, Field(min_length=1)]


# -- content parts --------------------------------------------------------------------------
class TextPart(Shape):
    type: Literal["text"]
    text: str


class RefusalPart(Shape):
    type: Literal["refusal"]
    refusal: str


class ImageURL(Shape):
    url: Name
    detail: Literal["auto", "low", "high", "original"] | None = None


class ImagePart(Shape):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(Shape):
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(Shape):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileData(Shape):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(Shape):
    type: Literal["file"]
    file: FileData


UserPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]
TextParts = Annotated[list[TextPart], Field(max_length=MAX_PARTS)]


# -- tool calls and messages ----------------------------------------------------------------
class CalledFunction(Shape):
    name: Name
    arguments: str


class FunctionToolCall(Shape):
    type: Literal["function"]
    id: str
    function: CalledFunction


class CalledCustom(Shape):
    name: Name
    input: str


class CustomToolCall(Shape):
    type: Literal["custom"]
    id: str
    custom: CalledCustom


ToolCall = Annotated[FunctionToolCall | CustomToolCall, Field(discriminator="type")]


class NamedFunction(Shape):
    name: Name


class SystemMessage(Shape):
    role: Literal["system", "developer"]
    content: str | TextParts


class UserMessage(Shape):
    role: Literal["user"]
    content: str | Annotated[list[UserPart], Field(max_length=MAX_PARTS)]


class AssistantMessage(Shape):
    role: Literal["assistant"]
    content: str | Annotated[list[AssistantPart], Field(max_length=MAX_PARTS)] | None = None
    refusal: str | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOLS)] | None = None
    function_call: CalledFunction | None = None


class ToolMessage(Shape):
    role: Literal["tool"]
    content: str | TextParts
    tool_call_id: str


class FunctionMessage(Shape):
    role: Literal["function"]
    content: str | None
    name: Name


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
    Field(discriminator="role"),
]


# -- tools, tool choice, response format ----------------------------------------------------
class FunctionDefinition(Shape):
    name: Name
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(Shape):
    type: Literal["function"]
    function: FunctionDefinition


class CustomToolDefinition(Shape):
    name: Name
    description: str | None = None
    format: dict[str, Any] | None = None


class CustomTool(Shape):
    type: Literal["custom"]
    custom: CustomToolDefinition


Tool = Annotated[FunctionTool | CustomTool, Field(discriminator="type")]


class NamedFunctionChoice(Shape):
    type: Literal["function"]
    function: NamedFunction


class NamedCustomChoice(Shape):
    type: Literal["custom"]
    custom: NamedFunction


class AllowedTools(Shape):
    mode: Literal["auto", "required"]
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)]


class AllowedToolsChoice(Shape):
    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


ToolChoice = (
    Literal["none", "auto", "required"]
    | Annotated[
        NamedFunctionChoice | NamedCustomChoice | AllowedToolsChoice, Field(discriminator="type")
    ]
)


class JSONSchema(Shape):
    name: Name
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class PlainFormat(Shape):
    type: Literal["text", "json_object"]


class JSONSchemaFormat(Shape):
    type: Literal["json_schema"]
    json_schema: JSONSchema


ResponseFormat = Annotated[PlainFormat | JSONSchemaFormat, Field(discriminator="type")]


class StreamOptions(Shape):
    include_usage: bool = False
