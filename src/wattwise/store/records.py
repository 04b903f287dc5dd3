"""One trace row per request: what was asked, where it went, what it cost and how it ended.

Usage::

    record = TraceRecord(id="req_1", ts=time.time(), requested_model="auto", model="small")
    record.cleaned()                      # the same row with text any store can take
    record.stub("why the full row failed")  # the row's identity and outcome only, the reason in ``error``
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

# Lone surrogates (Python's str can hold U+D800..U+DFFF; UTF-8 cannot) and NUL (PostgreSQL text cannot).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with each lone surrogate and each NUL replaced by U+FFFD (REPLACEMENT CHARACTER).

    Replaced rather than removed: the stored text keeps its length and shows where something was.
    Two surrogate halves in a row are two code points in a ``str``, so each becomes U+FFFD.

    Usage::

        clean_text("a\\x00b\\udc00")   # "a\\ufffdb\\ufffd"
    """
    return _UNSTORABLE.sub("\ufffd", text)


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
    key_id: str | None = None  # the API key that made the request (None: no keys configured)
    team: str | None = None
    router_version: str | None = None  # the router (content hash) that decided it; None: not routed
    cache: str | None = None  # the response cache: hit, miss, bypass (None: no cache configured)
    cache_source: str | None = None  # a hit: the request whose answer it served
    saved_usd: float | None = None  # a hit: what the served answer cost when it was made
    saved_j: float | None = None

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in COLUMNS)

    def cleaned(self) -> TraceRecord:
        """A copy whose text fields pass :func:`clean_text` (lone surrogates and NUL become U+FFFD)."""
        values: dict[str, Any] = {}
        for name in COLUMNS:
            value = getattr(self, name)
            values[name] = clean_text(value) if isinstance(value, str) else value
        return TraceRecord(**values)

    def stub(self, note: str) -> TraceRecord:
        """The row cut to its identity and outcome, with ``note`` (why the full row failed) in ``error``.

        For a row that even :meth:`cleaned` cannot make storable (say a token count past BIGINT): the
        request still appears in reports, counted, with no content, usage, cost or energy.
        """
        error = f"trace row not storable ({note})" + (f"; request error: {self.error}" if self.error else "")
        return TraceRecord(id=self.id, ts=self.ts, requested_model=self.requested_model, model=self.model,
                           tag=self.tag, key_id=self.key_id, team=self.team, stream=self.stream,
                           status=self.status, http_status=self.http_status,
                           error=error).cleaned()


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(TraceRecord))
