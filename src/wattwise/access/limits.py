"""Rate limits: requests and tokens per minute per key (and per model where the key says so), in fixed
one-minute windows of the :class:`~wattwise.access.state.SharedState`, with OpenAI's headers.

Tokens are counted when the request is admitted, as OpenAI does: the prompt's estimated tokens
(UTF-8 bytes / 4) plus its output limit.

Usage::

    limiter = Limiter(state=state)
    headers = await limiter.admit(principal, model="fast", tokens=1200)   # or raises RateLimited
    headers["x-ratelimit-remaining-requests"]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from wattwise.access.principal import Principal
from wattwise.access.state import Hit, SharedState
from wattwise.exceptions import RateLimited

WINDOW_S = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    name: str
    kind: str  # "requests" or "tokens"
    limit: int
    cost: float
    scope: str  # what the limit is on, for the error message


def windows(principal: Principal, *, model: str, tokens: int) -> list[Window]:
    """The windows a request counts in: the key's, then the model's for this key."""
    s, out = principal.settings, []
    for scope, rpm, tpm, suffix in (("key", s.rpm, s.tpm, ""),
                                    (f"model {model}", *_model_limits(principal, model), f":{model}")):
        if rpm is not None:
            out.append(Window(name=f"rpm:{principal.key_id}{suffix}", kind="requests", limit=rpm, cost=1,
                              scope=scope))
        if tpm is not None:
            out.append(Window(name=f"tpm:{principal.key_id}{suffix}", kind="tokens", limit=tpm, cost=tokens,
                              scope=scope))
    return out


def _model_limits(principal: Principal, model: str) -> tuple[int | None, int | None]:
    limit = principal.settings.model_limits.get(model)
    return (limit.rpm, limit.tpm) if limit is not None else (None, None)


def reset_text(seconds: float) -> str:
    """OpenAI's reset format: ``"1s"``, ``"6m0s"``, ``"250ms"``.

    >>> reset_text(0.25), reset_text(12.2), reset_text(75)
    ('250ms', '13s', '1m15s')
    """
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    return f"{whole // 60}m{whole % 60}s" if whole >= 60 else f"{whole}s"


class Limiter:
    """Counts each request in its windows, all or none; refuses with 429 and ``Retry-After``."""

    def __init__(self, *, state: SharedState) -> None:
        self.state = state

    async def admit(self, principal: Principal, *, model: str, tokens: int) -> dict[str, str]:
        """Count the request; the ``x-ratelimit-*`` headers for its answer, or raise :class:`RateLimited`."""
        counted: list[tuple[Window, Hit]] = []
        for window in windows(principal, model=model, tokens=tokens):
            hit = await self.state.hit(window.name, cost=window.cost, limit=window.limit, window_s=WINDOW_S)
            if not hit.allowed:
                for done, _ in counted:
                    await self.state.refund(done.name, cost=done.cost, window_s=WINDOW_S)
                headers = _headers([*counted, (window, hit)])
                headers["retry-after"] = str(max(1, math.ceil(hit.reset_s)))
                too_big = window.cost > window.limit
                raise RateLimited(f"Rate limit reached for {window.scope}: {window.limit} {window.kind} per minute"
                                  + (f"; this request alone needs {window.cost:g}" if too_big else
                                     f"; try again in {reset_text(hit.reset_s)}"), headers=headers)
            counted.append((window, hit))
        return _headers(counted)


def _headers(counted: list[tuple[Window, Hit]]) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers: per kind, the tightest window (least remaining)."""
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        mine = [(w, h) for w, h in counted if w.kind == kind]
        if not mine:
            continue
        window, hit = min(mine, key=lambda pair: pair[1].remaining)
        headers[f"x-ratelimit-limit-{kind}"] = str(window.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(int(hit.remaining))
        headers[f"x-ratelimit-reset-{kind}"] = reset_text(hit.reset_s)
    return headers
