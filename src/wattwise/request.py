"""The request body of ``POST /v1/chat/completions``, validated strictly where OpenAI is strict,
with OpenAI-style error fields (``param`` names the offending field, e.g. ``tools[0].function.name``).

Types are strict (``max_tokens: "10"`` or ``true`` is a 400, not a coercion), numbers are bounded,
``tools``/``tool_choice``/``response_format``/content parts are checked against OpenAI's shapes, and
unknown fields (``reasoning_effort``, ``metadata`` …) pass through to the backend untouched.

Usage::

    body = parse_chat_body(raw_bytes, max_bytes=10_000_000)     # bytes, e.g. a batch line
    body = chat_body(await read_json(request, max_bytes))        # a decoded object, in a handler
    body.model, body.messages, body.wattwise.quality_target
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationError, model_validator

from wattwise.exceptions import InvalidRequest, PayloadTooLarge
from wattwise.jsontext import decode_json

MAX_OUTPUT_TOKENS = 1 << 20  # above any model's output limit: a bigger value is a mistake, not a wish
INT64 = 1 << 63
NAME = r"^[a-zA-Z0-9_-]{1,64}$"


def tagged(kinds: dict[str, Any], pick: Callable[[Any], str | None], message: str) -> Any:
    """A union whose branch ``pick(value)`` chooses (tags start with ``~`` and are left out of error
    paths), so an error names one branch and a clean path; ``None`` from ``pick`` is ``message``."""
    members = tuple(Annotated[kind, Tag(tag)] for tag, kind in kinds.items())
    return Annotated[Union[members], Discriminator(pick, custom_error_type="invalid_type",  # noqa: UP007
                                                   custom_error_message=message)]


def _str_or_list(value: Any) -> str | None:
    return "~str" if isinstance(value, str) else "~list" if isinstance(value, list) else None


def _by_type(known: tuple[str, ...], *, other: bool = False) -> Callable[[Any], str | None]:
    """Pick a branch by the object's ``type``; unknown types go to ``~other`` when allowed."""
    def pick(value: Any) -> str | None:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        if not isinstance(kind, str):
            return None
        return f"~{kind}" if kind in known else ("~other" if other else None)
    return pick


class Strict(BaseModel):
    """Strict types; fields we do not know are kept (and passed through)."""

    model_config = ConfigDict(strict=True, extra="allow")


# -- content parts ---------------------------------------------------------------------------------

class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImageURL(Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(Strict):
    data: str
    format: str


class AudioPart(Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileRef(Strict):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(Strict):
    type: Literal["file"]
    file: FileRef


class RefusalPart(Strict):
    type: Literal["refusal"]
    refusal: str


class OtherPart(Strict):
    """A part type OpenAI does not define (``video_url`` …): the backend decides."""

    type: str


PARTS = {"~text": TextPart, "~image_url": ImagePart, "~input_audio": AudioPart, "~file": FilePart,
         "~refusal": RefusalPart, "~other": OtherPart}
if TYPE_CHECKING:  # what mypy sees; pydantic gets the checked unions below
    ContentPart: TypeAlias = Strict
    Content: TypeAlias = str | list[Strict]
    StopSequences: TypeAlias = str | list[str]
else:
    ContentPart = tagged(PARTS, _by_type(("text", "image_url", "input_audio", "file", "refusal"), other=True),
                         "each content part must be an object with a string 'type'")
    Content = tagged({"~str": str, "~list": list[ContentPart]}, _str_or_list,
                     "content must be a string or an array of content parts")
    StopSequences = tagged({"~str": str, "~list": Annotated[list[str], Field(max_length=4)]}, _str_or_list,
                           "stop must be a string or an array of at most 4 strings")


# -- messages --------------------------------------------------------------------------------------

class CalledFunction(Strict):
    name: str
    arguments: str


class ToolCall(Strict):
    id: str
    type: Literal["function", "custom"]
    function: CalledFunction | None = None


NEEDS_CONTENT = ("system", "developer", "user", "tool")


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _role_fields(self) -> Message:
        if self.role in NEEDS_CONTENT and self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs tool_call_id")
        return self


# -- tools and formats -----------------------------------------------------------------------------

class FunctionDef(Strict):
    name: Annotated[str, Field(pattern=NAME)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(Strict):
    type: Literal["function"]
    function: FunctionDef


class CustomDef(Strict):
    name: Annotated[str, Field(pattern=NAME)]
    description: str | None = None
    format: dict[str, Any] | None = None


class CustomTool(Strict):
    type: Literal["custom"]
    custom: CustomDef


class ToolName(Strict):
    name: str


class FunctionChoice(Strict):
    type: Literal["function"]
    function: ToolName


class CustomChoice(Strict):
    type: Literal["custom"]
    custom: ToolName


class AllowedTools(Strict):
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


class AllowedToolsChoice(Strict):
    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


class TextFormat(Strict):
    type: Literal["text"]


class JsonObjectFormat(Strict):
    type: Literal["json_object"]


class JsonSchemaSpec(Strict):
    name: Annotated[str, Field(pattern=NAME)]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


def _choice_kind(value: Any) -> str | None:
    return "~mode" if isinstance(value, str) else _by_type(("function", "custom", "allowed_tools"))(value)


if TYPE_CHECKING:
    Tool: TypeAlias = FunctionTool | CustomTool
    ToolChoice: TypeAlias = str | FunctionChoice | CustomChoice | AllowedToolsChoice
    ResponseFormat: TypeAlias = TextFormat | JsonObjectFormat | JsonSchemaFormat
else:
    Tool = tagged({"~function": FunctionTool, "~custom": CustomTool}, _by_type(("function", "custom")),
                  "each tool must be an object with type 'function' (or 'custom')")
    ToolChoice = tagged({"~mode": Literal["none", "auto", "required"], "~function": FunctionChoice,
                         "~custom": CustomChoice, "~allowed_tools": AllowedToolsChoice}, _choice_kind,
                        "tool_choice must be 'none', 'auto', 'required' or an object naming a tool")
    ResponseFormat = tagged({"~text": TextFormat, "~json_object": JsonObjectFormat, "~json_schema": JsonSchemaFormat},
                            _by_type(("text", "json_object", "json_schema")),
                            "response_format must be an object with type 'text', 'json_object' or 'json_schema'")


# -- the body --------------------------------------------------------------------------------------

class StreamOptions(Strict):
    include_usage: bool = False


class WattwiseOptions(BaseModel):
    """The optional ``wattwise`` object: the quality/cost dial and scheduling hints."""

    model_config = ConfigDict(strict=True, extra="forbid")

    quality_target: float | None = Field(default=None, ge=0.0, le=1.0)
    max_cost_usd: float | None = Field(default=None, ge=0.0, le=1e9)
    priority: Literal["interactive", "batch"] = "interactive"
    tag: str | None = Field(default=None, max_length=200)
    cache: Literal["off", "exact", "semantic"] | None = None


# Fields wattwise consumes itself; every other field of the client's body goes upstream as sent.
NOT_FORWARDED = ("model", "messages", "stream", "wattwise")
# Fields checked here that the backend still gets in ``passthrough()`` (they were never ours).
CHECKED_PASSTHROUGH = {"tools", "tool_choice", "parallel_tool_calls", "response_format", "presence_penalty",
                       "frequency_penalty", "logit_bias", "top_logprobs"}


class ChatBody(Strict):
    model: str = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, gt=0, le=MAX_OUTPUT_TOKENS)
    max_completion_tokens: int | None = Field(default=None, gt=0, le=MAX_OUTPUT_TOKENS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopSequences | None = None
    seed: int | None = Field(default=None, ge=-INT64, lt=INT64)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    wattwise: WattwiseOptions = WattwiseOptions()

    # The client's fields as sent (set by chat_body), for pass-through backends.
    _sent: dict[str, Any] | None = PrivateAttr(default=None)

    def sent(self) -> dict[str, Any]:
        """The client's fields exactly as sent, but for those wattwise consumes itself."""
        if self._sent is None:
            return self.model_dump(exclude_unset=True, exclude=set(NOT_FORWARDED), by_alias=True)
        return self._sent

    def passthrough(self) -> dict[str, Any]:
        """Fields we do not interpret, for the backend."""
        checked = self.model_dump(include=CHECKED_PASSTHROUGH, exclude_unset=True, by_alias=True)
        return {**(self.model_extra or {}), **checked}

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def stop_list(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith("~"):  # a union tag from tagged(), not a field
            out += f".{part}" if out else part
    return out


def _cross_field(body: ChatBody) -> None:
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest("invalid 'stream_options': only allowed when 'stream' is true", param="stream_options")
    legacy = "functions" in (body.model_extra or {})
    if body.tool_choice not in (None, "none", "auto") and not body.tools and not legacy:
        raise InvalidRequest("invalid 'tool_choice': only allowed when 'tools' are given", param="tool_choice")


def chat_body(data: Any) -> ChatBody:
    """Validate a decoded JSON body; raises :class:`InvalidRequest` (400) naming the offending field."""
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    try:
        body = ChatBody.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = _param(tuple(err["loc"])) or None
        code = "missing_required_parameter" if err["type"] == "missing" else "invalid_value"
        raise InvalidRequest(f"invalid '{param or 'body'}': {err['msg']}", param=param, code=code) from None
    _cross_field(body)
    body._sent = {k: v for k, v in data.items() if k not in NOT_FORWARDED}
    return body


def parse_chat_body(raw: bytes, *, max_bytes: int) -> ChatBody:
    """Decode (see :func:`wattwise.api.body.decode_json`) and validate; raises a :class:`RequestError`."""
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"request body is {len(raw)} bytes; the limit is {max_bytes}")
    return chat_body(decode_json(raw))
