"""The trace store in the outcomes format: served requests with a known score become training data.

``prompt_id`` is the hash of the prompt, so the same prompt served by several models shares it.

Usage::

    rows, skipped = to_outcomes(store.fetch())
    write_outcomes("traffic.jsonl.gz", rows)
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from wattwise.outcomes import Outcome
from wattwise.store.records import TraceRecord


def _prompt(record: TraceRecord) -> str | None:
    if not record.messages:
        return None
    messages = json.loads(record.messages)
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return None


def to_outcomes(records: Sequence[TraceRecord]) -> tuple[list[Outcome], int]:
    """Rows that can be outcomes (ok, scored, content stored); returns them and how many were skipped."""
    out: list[Outcome] = []
    for r in records:
        prompt = _prompt(r)
        if r.status != "ok" or r.score is None or prompt is None or r.model is None:
            continue
        out.append(Outcome(prompt_id=r.prompt_hash or r.id, task=r.tag or "gateway", prompt=prompt,
                           model=r.model, score=r.score, cost_usd=r.cost_usd, input_tokens=r.input_tokens,
                           output_tokens=r.output_tokens, response=r.response))
    return out, len(records) - len(out)
