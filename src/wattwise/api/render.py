"""Rendering shared by the HTTP routes: the meter headers and extras, and JSON that never fails on text.

Usage::

    JSONBody(body, headers=meter_headers(request_id, outcome))
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from wattwise.call import Outcome


def _num(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.10g}"


def header_value(text: str, limit: int = 500) -> str:
    """A safe header value: ASCII, no control characters (an upstream's CR/LF must not split headers)."""
    return "".join(c if " " <= c < "\x7f" else "?" for c in text[:limit])


def meter_headers(request_id: str, outcome: Outcome | None, *, pending: bool = False) -> dict[str, str]:
    headers = {"x-wattwise-request-id": request_id}
    if outcome is None:
        headers.update({"x-wattwise-model": "none", "x-wattwise-cost-usd": "0", "x-wattwise-energy-j": "0"})
        return headers
    headers["x-wattwise-model"] = header_value(outcome.decision.model)
    if outcome.cache is not None:
        headers["x-wattwise-cache"] = outcome.cache
        if outcome.cached is not None:
            headers["x-wattwise-cache-kind"] = outcome.cached.kind
            headers["x-wattwise-cache-source"] = outcome.cached.entry.request_id
    headers["x-wattwise-route"] = header_value(outcome.decision.reason)
    if pending and outcome.cached is None:
        headers.update({"x-wattwise-cost-usd": "pending", "x-wattwise-energy-j": "pending"})
    else:
        headers["x-wattwise-cost-usd"] = _num(outcome.cost_usd)
        headers["x-wattwise-energy-j"] = _num(outcome.energy.joules)
        headers["x-wattwise-energy-source"] = outcome.energy.source
    return headers


def meter_body(outcome: Outcome) -> dict[str, Any]:
    body: dict[str, Any] = {"model": outcome.decision.model, "route": outcome.decision.reason,
            "policy": outcome.decision.policy, "cost_usd": outcome.cost_usd,
            "cost_source": outcome.cost_source, "energy_j": outcome.energy.joules,
            "energy_source": outcome.energy.source}
    if outcome.cache is not None:
        hit = outcome.cached
        body["cache"] = {"status": outcome.cache} if hit is None else {
            "status": "hit", "kind": hit.kind, "similarity": round(hit.similarity, 4),
            "source_request_id": hit.entry.request_id, "saved_usd": hit.entry.cost_usd,
            "saved_energy_j": hit.entry.energy_j}
    return body


def dumps(data: Any) -> bytes:
    """JSON bytes as UTF-8; text with lone surrogates (valid JSON escapes, invalid Unicode) stays escaped."""
    try:
        return json.dumps(data, ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError:
        return json.dumps(data, allow_nan=False).encode()


class JSONBody(Response):
    """A JSON response rendered with :func:`dumps` (Starlette's ``JSONResponse`` fails on lone surrogates)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)
