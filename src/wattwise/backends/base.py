"""The backend interface: one configured model's way of answering a chat request.

A backend turns a :class:`ChatRequest` into a :class:`Completion` (or a stream of
:class:`StreamEvent`), and maps every failure of its own into :mod:`wattwise.exceptions` at this
boundary. Backends are found by name through the ``wattwise.backends`` entry-point group, the
built-in ones exactly like third-party ones.

Usage::

    backend = MockBackend(name="m", reply="hi")
    completion = await backend.complete(ChatRequest(messages=[{"role": "user", "content": "yo"}]))
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from wattwise.exceptions import InvalidRequest
from wattwise.metering.energy import EnergyReading
from wattwise.metering.usage import Usage


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRequest:
    """What the gateway asks of a backend; ``extra`` carries other OpenAI fields through."""

    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    logprobs: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # The client's fields exactly as sent (all but model, messages, stream, stream_options and
    # wattwise): a pass-through backend forwards these unchanged instead of the typed view above.
    sent: dict[str, Any] | None = None

    def with_fields(self, **fields: Any) -> ChatRequest:
        """A copy with fields set (e.g. ``reasoning_effort`` chosen by a policy), in both views."""
        sent = None if self.sent is None else {**self.sent, **fields}
        return replace(self, extra={**self.extra, **fields}, sent=sent)

    def prompt_text(self) -> str:
        """The text of all messages, joined; what replay looks up and the router reads."""
        return "\n".join(_content_text(m.get("content")) for m in self.messages)

    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""


def refuse_n(request: ChatRequest, name: str) -> None:
    """For backends that give one answer a call: ``n > 1`` is a 400 naming ``n``, never ignored."""
    n = request.extra.get("n", 1)
    if n != 1:
        raise InvalidRequest(f"the model '{name}' answers one choice per request; n={n} cannot be honoured",
                             param="n", code="unsupported_value")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """A finished answer. ``cost_usd`` is set only when the backend knows the real cost.

    ``text`` is the first choice's content (``None`` when the answer is only tool calls);
    ``message_extra`` holds the message's other fields (``tool_calls``, ``refusal`` …) and
    ``logprobs`` OpenAI's ``choice.logprobs`` object. A pass-through backend also sets ``raw``: the
    upstream's whole response body, which reaches the client unchanged but for ``model``.
    ``headers`` are upstream headers worth passing on (``x-ratelimit-*``).
    """

    text: str | None
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    energy: EnergyReading | None = None
    logprob: float | None = None
    score: float | None = None
    message_extra: dict[str, Any] = field(default_factory=dict)
    logprobs: dict[str, Any] | None = None
    raw: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEvent:
    """One piece of a streamed answer; the last one carries ``finish_reason`` and ``usage``.

    ``delta`` is content text; ``delta_extra`` the delta's other fields (``tool_calls``,
    ``reasoning_content`` …) and ``logprobs`` the chunk's ``choice.logprobs``. A pass-through backend
    sets ``raw`` on each event: the upstream's chunk as sent, which the client gets unchanged but for
    ``model`` (an event with ``raw`` and nothing else is forwarded and not interpreted).
    """

    delta: str = ""
    delta_extra: dict[str, Any] | None = None
    logprobs: dict[str, Any] | None = None
    raw: dict[str, Any] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    energy: EnergyReading | None = None
    score: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Forwarded:
    """One line of a forwarded stream, passed on as is; ``usage`` when the line carried it."""

    line: bytes
    usage: Usage | None = None


class Backend(ABC):
    """A model backend. Subclasses set ``kind`` and implement ``complete`` and ``stream``."""

    kind: str = "abstract"

    def __init__(self, *, name: str) -> None:
        self.name = name

    @abstractmethod
    async def complete(self, request: ChatRequest) -> Completion:
        """Answer in one piece."""

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Answer piece by piece; closing the iterator cancels the upstream work."""

    async def forward(self, path: str, body: dict[str, Any]) -> Completion:
        """Another OpenAI endpoint (``/embeddings``, ``/completions``, ``/responses``), non-streamed:
        the upstream's body in ``raw``, its usage read. Only pass-through backends have one."""
        raise InvalidRequest(f"the model '{self.name}' ({self.kind}) does not serve /v1{path}", param="model",
                             code="unsupported_endpoint")

    def forward_stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[Forwarded]:
        """The same, streamed: the upstream's server-sent-event lines as they come."""
        raise InvalidRequest(f"the model '{self.name}' ({self.kind}) does not serve /v1{path}", param="model",
                             code="unsupported_endpoint")

    async def health(self) -> bool | None:
        """An active health probe: True up, False down, None when the backend has no probe."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections, models and threads."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind}
