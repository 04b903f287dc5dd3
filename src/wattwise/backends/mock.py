"""A mock backend for tests and demos: a fixed or echoed reply, optional delay and failure.

Usage::

    backend = MockBackend(name="m", reply="hello world", delay_s=0.01)
    backend = MockBackend(name="m", fail=UpstreamError("boom"))   # every call raises
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from wattwise.backends.base import Backend, ChatRequest, Completion, StreamEvent, refuse_n
from wattwise.exceptions import UpstreamError, WattwiseError
from wattwise.metering.usage import Usage

if TYPE_CHECKING:
    from wattwise.backends.registry import BuildContext
    from wattwise.config import ModelConfig


class MockBackend(Backend):
    """Answers ``reply`` (or echoes the last user message when ``reply`` is None), a word a chunk."""

    kind = "mock"

    def __init__(self, *, name: str, reply: str | None = "Hello from the mock backend.",
                 delay_s: float = 0.0, fail: WattwiseError | None = None,
                 usage: Usage | None = None, cost_usd: float | None = None) -> None:
        super().__init__(name=name)
        self.reply = reply
        self.delay_s = delay_s
        self.fail = fail
        self.fixed_usage = usage
        self.cost_usd = cost_usd
        self.calls: list[ChatRequest] = []
        self.cancelled = 0

    def _text(self, request: ChatRequest) -> str:
        text = self.reply if self.reply is not None else request.last_user_text()
        if request.max_tokens is not None:
            text = " ".join(text.split(" ")[: request.max_tokens])
        return text

    def _usage(self, request: ChatRequest, text: str) -> Usage:
        if self.fixed_usage is not None:
            return self.fixed_usage
        return Usage(input_tokens=len(request.prompt_text().split()), output_tokens=len(text.split()))

    async def complete(self, request: ChatRequest) -> Completion:
        refuse_n(request, self.name)
        self.calls.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        text = self._text(request)
        return Completion(text=text, usage=self._usage(request, text), cost_usd=self.cost_usd)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        refuse_n(request, self.name)
        self.calls.append(request)
        text = self._text(request)
        words = text.split(" ")
        try:
            for i, word in enumerate(words):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if self.fail is not None:
                    raise self.fail
                yield StreamEvent(delta=word if i == 0 else " " + word)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        yield StreamEvent(finish_reason="stop", usage=self._usage(request, text), cost_usd=self.cost_usd)


def from_config(name: str, spec: ModelConfig, context: BuildContext) -> MockBackend:
    """Options: ``reply`` (str; empty echoes), ``delay_s`` (float), ``fail_message`` (str)."""
    options = spec.options
    fail = options.get("fail_message")
    reply = options.get("reply", "Hello from the mock backend.")
    return MockBackend(name=name, reply=reply or None, delay_s=float(options.get("delay_s", 0.0)),
                       fail=UpstreamError(str(fail)) if fail else None)
