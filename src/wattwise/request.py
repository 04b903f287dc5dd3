"""The request body of ``POST /v1/chat/completions``, validated, with OpenAI-style error fields.

Unknown top-level fields (``tools``, ``response_format``, ``reasoning_effort`` …) pass through to
the backend untouched.

Usage::

    body = parse_chat_body(raw_bytes, max_bytes=10_000_000)
    body.model, body.messages, body.wattwise.quality_target
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from wattwise.exceptions import InvalidRequest, PayloadTooLarge, Unprocessable


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class WattwiseOptions(BaseModel):
    """The optional ``wattwise`` object: the quality/cost dial and scheduling hints."""

    model_config = ConfigDict(extra="forbid")

    quality_target: float | None = Field(default=None, ge=0.0, le=1.0)
    max_cost_usd: float | None = Field(default=None, ge=0.0)
    priority: Literal["interactive", "batch"] = "interactive"
    tag: str | None = Field(default=None, max_length=200)


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool = False
    user: str | None = None
    wattwise: WattwiseOptions = WattwiseOptions()

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def passthrough(self) -> dict[str, Any]:
        """Fields we do not interpret, for the backend."""
        return dict(self.model_extra or {})

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def stop_list(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_chat_body(raw: bytes, *, max_bytes: int) -> ChatBody:
    """Parse and validate; raises a :class:`RequestError` naming the offending field."""
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"request body is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    try:
        body = ChatBody.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = _param(tuple(err["loc"]))
        code = "missing_required_parameter" if err["type"] == "missing" else "invalid_value"
        raise InvalidRequest(f"invalid '{param}': {err['msg']}", param=param, code=code) from None
    if body.n != 1:
        raise Unprocessable("only n=1 is supported", param="n")
    return body
