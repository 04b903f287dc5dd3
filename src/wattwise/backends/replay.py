"""Answers from recorded outcomes: the whole pipeline on real benchmark data, no model server.

For a prompt it knows, the replay backend returns the recorded response, token counts, cost and
score of its source model; for one it does not know, :class:`UnknownPrompt` (404). The prompt is
matched on the text of the last user message. Where the file has no token counts they are
estimated at 4 characters a token (as the RouteLLM files were).

Usage::

    index = ReplayIndex.from_rows(load_outcomes("routerbench_zs.test.jsonl.gz"))
    backend = ReplayBackend(name="gpt-4", index=index, source_model="gpt-4-1106-preview")
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wattwise.backends.base import Backend, ChatRequest, Completion, StreamEvent, refuse_n
from wattwise.data import resolve
from wattwise.exceptions import ConfigError, UnknownPrompt
from wattwise.metering.usage import Usage
from wattwise.outcomes import Outcome, load_outcomes

if TYPE_CHECKING:
    from wattwise.backends.registry import BuildContext
    from wattwise.config import ModelConfig

_PIECES = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True, kw_only=True)
class ReplayIndex:
    """``{prompt text: {model: outcome}}`` over one or more outcomes files."""

    table: dict[str, dict[str, Outcome]]

    @classmethod
    def from_rows(cls, rows: Iterable[Outcome]) -> ReplayIndex:
        table: dict[str, dict[str, Outcome]] = {}
        for row in rows:
            table.setdefault(row.prompt, {})[row.model] = row
        return cls(table=table)

    def models(self) -> set[str]:
        return {model for answers in self.table.values() for model in answers}

    def lookup(self, prompt: str, model: str) -> Outcome | None:
        return self.table.get(prompt, {}).get(model)


class ReplayBackend(Backend):
    kind = "replay"

    def __init__(self, *, name: str, index: ReplayIndex, source_model: str) -> None:
        super().__init__(name=name)
        self.index = index
        self.source_model = source_model

    def _find(self, request: ChatRequest) -> Outcome:
        refuse_n(request, self.name)
        found = self.index.lookup(request.last_user_text(), self.source_model)
        if found is None:
            found = self.index.lookup(request.prompt_text(), self.source_model)
        if found is None:
            raise UnknownPrompt(f"model '{self.name}' (replay of {self.source_model}) has no recorded "
                                "answer for this prompt", param="messages")
        return found

    def _completion(self, row: Outcome) -> Completion:
        # Files without token counts (RouterBench) get the same 4-characters-a-token estimate the
        # RouteLLM files were built with; the recorded cost is used as is either way.
        input_tokens = row.input_tokens if row.input_tokens is not None else -(-len(row.prompt) // 4)
        output_tokens = row.output_tokens
        if output_tokens is None:
            output_tokens = -(-len(row.response or "") // 4)
        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        return Completion(text=row.response or "", usage=usage, cost_usd=row.cost_usd, score=row.score)

    async def complete(self, request: ChatRequest) -> Completion:
        return self._completion(self._find(request))

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        done = self._completion(self._find(request))
        for piece in _PIECES.findall(done.text or ""):
            yield StreamEvent(delta=piece)
            await asyncio.sleep(0)
        yield StreamEvent(finish_reason="stop", usage=done.usage, cost_usd=done.cost_usd, score=done.score)

    def describe(self) -> dict[str, str]:
        return {"backend": self.kind, "source_model": self.source_model}


def from_config(name: str, spec: ModelConfig, context: BuildContext) -> ReplayBackend:
    if not spec.outcomes:
        raise ConfigError("a replay model needs outcomes (a file path or builtin:NAME)",
                          key=f"models.{name}.outcomes")
    path = resolve(spec.outcomes, base_dir=context.config_dir)
    key = ("replay-index", str(path))
    if key not in context.cache:
        context.cache[key] = ReplayIndex.from_rows(load_outcomes(path))
    index: ReplayIndex = context.cache[key]
    source = spec.source_model or name
    if source not in index.models():
        raise ConfigError(f"{path} has no outcomes for model {source!r}",
                          key=f"models.{name}.source_model")
    return ReplayBackend(name=name, index=index, source_model=source)
