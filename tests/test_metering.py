"""Pricing and energy: pure functions, every figure labelled with its source."""

from __future__ import annotations

import pytest

from wattwise.metering.energy import UNKNOWN, EnergyProfile, EnergyReading, estimate, measured, tokens_per_joule
from wattwise.metering.pricing import Price, cost_or_none, cost_usd
from wattwise.metering.usage import Usage


def test_cached_input_and_reasoning_prices() -> None:
    usage = Usage(input_tokens=1000, cached_input_tokens=800, output_tokens=300, reasoning_tokens=200)
    plain = Price(input=2.0, output=10.0)
    assert cost_usd(plain, usage) == pytest.approx((1000 * 2 + 300 * 10) / 1e6)
    split = Price(input=2.0, output=10.0, cached_input=0.5, reasoning=20.0)
    assert cost_usd(split, usage) == pytest.approx((200 * 2 + 800 * 0.5 + 100 * 10 + 200 * 20) / 1e6)


def test_cached_tokens_never_exceed_input() -> None:
    usage = Usage(input_tokens=10, cached_input_tokens=50, output_tokens=0)
    assert cost_usd(Price(input=1.0, output=1.0, cached_input=0.0), usage) == 0.0


def test_unknown_price_is_none() -> None:
    assert cost_or_none(None, Usage(input_tokens=5)) is None


def test_energy_sources() -> None:
    usage = Usage(input_tokens=100, output_tokens=50)
    per_token = estimate(EnergyProfile(joules_per_input_token=0.01, joules_per_output_token=0.2), usage, busy_s=9)
    assert per_token == EnergyReading(joules=11.0, source="estimated")
    by_power = estimate(EnergyProfile(watts=15.0), usage, busy_s=2.0)
    assert by_power == EnergyReading(joules=30.0, source="estimated")
    assert estimate(None, usage, busy_s=1.0) is UNKNOWN
    assert estimate(EnergyProfile(watts=15.0), usage, busy_s=None) is UNKNOWN
    assert measured(100.0, 112.5) == EnergyReading(joules=12.5, source="measured")


def test_energy_sums_keep_honest_labels() -> None:
    m = EnergyReading(joules=1.0, source="measured")
    e = EnergyReading(joules=2.0, source="estimated")
    assert (m + m).source == "measured"
    assert (m + e) == EnergyReading(joules=3.0, source="estimated")
    assert (m + UNKNOWN) is UNKNOWN


def test_tokens_per_joule() -> None:
    assert tokens_per_joule(150, EnergyReading(joules=30.0, source="estimated")) == 5.0
    assert tokens_per_joule(150, UNKNOWN) is None


def test_usage_from_openai_details() -> None:
    usage = Usage.from_openai({"prompt_tokens": 9, "completion_tokens": 4,
                               "prompt_tokens_details": {"cached_tokens": 6},
                               "completion_tokens_details": {"reasoning_tokens": 3}})
    assert usage == Usage(input_tokens=9, cached_input_tokens=6, output_tokens=4, reasoning_tokens=3)
    assert Usage.from_openai(usage.to_openai()) == usage
    assert Usage.from_openai(None) == Usage()
