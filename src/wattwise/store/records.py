"""One trace row per request: what was asked, where it went, what it cost and how it ended.

Usage::

    record = TraceRecord(id="req_1", ts=time.time(), requested_model="auto", model="small")
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(kw_only=True, slots=True)
class TraceRecord:
    id: str
    ts: float
    requested_model: str
    model: str | None = None
    tag: str | None = None
    route_policy: str | None = None
    route_reason: str | None = None
    stream: bool = False
    messages: str | None = None
    response: str | None = None
    prompt_hash: str | None = None
    input_tokens: int | None = None
    cached_input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: float | None = None
    cost_source: str = "unknown"
    energy_j: float | None = None
    energy_source: str = "unknown"
    ttft_s: float | None = None
    latency_s: float | None = None
    status: str = "ok"
    http_status: int = 200
    error: str | None = None
    score: float | None = None
    calls: str | None = None

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in COLUMNS)


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(TraceRecord))
