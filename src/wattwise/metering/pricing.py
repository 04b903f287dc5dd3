"""Dollar cost of a call: pure functions of usage and a price, no I/O.

Prices are US dollars per million tokens. Cached input tokens bill at the cached price (or the
input price when none is set); reasoning tokens bill as output unless a reasoning price is set.

Usage::

    price = Price(input=2.5, output=10.0, cached_input=1.25)
    cost_usd(price, Usage(input_tokens=1000, cached_input_tokens=800, output_tokens=200))
"""

from __future__ import annotations

from dataclasses import dataclass

from wattwise.metering.usage import Usage

PER = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    input: float
    output: float
    cached_input: float | None = None
    reasoning: float | None = None


def cost_usd(price: Price, usage: Usage) -> float:
    """What ``usage`` costs at ``price``."""
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    uncached = usage.input_tokens - cached
    cached_rate = price.input if price.cached_input is None else price.cached_input
    reasoning = min(usage.reasoning_tokens, usage.output_tokens)
    visible = usage.output_tokens - reasoning
    reasoning_rate = price.output if price.reasoning is None else price.reasoning
    return (uncached * price.input + cached * cached_rate + visible * price.output
            + reasoning * reasoning_rate) / PER


def cost_or_none(price: Price | None, usage: Usage) -> float | None:
    """Cost when the price is known, else ``None`` (never a guess)."""
    return None if price is None else cost_usd(price, usage)
