"""Energy of a call: pure functions, each result labelled with where it came from.

Sources: ``measured`` (a hardware counter: NVML for an NVIDIA GPU, RAPL for the CPU),
``estimated`` (a profile: joules per input and output token, or power × busy time) and
``unknown`` (no counter, no profile: the figure is ``None``, never made up).

Usage::

    profile = EnergyProfile(joules_per_input_token=0.01, joules_per_output_token=0.2)
    estimate(profile, Usage(input_tokens=100, output_tokens=50), busy_s=0.8)
    # EnergyReading(joules=11.0, source='estimated')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from wattwise.metering.usage import Usage

Source = Literal["measured", "estimated", "unknown"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EnergyProfile:
    joules_per_input_token: float | None = None
    joules_per_output_token: float | None = None
    watts: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EnergyReading:
    joules: float | None
    source: Source

    def __add__(self, other: EnergyReading) -> EnergyReading:
        if self.joules is None or other.joules is None:
            return UNKNOWN
        source: Source = "measured" if self.source == other.source == "measured" else "estimated"
        return EnergyReading(joules=self.joules + other.joules, source=source)


UNKNOWN = EnergyReading(joules=None, source="unknown")


def estimate(profile: EnergyProfile | None, usage: Usage, *, busy_s: float | None) -> EnergyReading:
    """Estimate from a per-token profile when it has one, else from power × busy time."""
    if profile is None:
        return UNKNOWN
    if profile.joules_per_input_token is not None or profile.joules_per_output_token is not None:
        joules = (usage.input_tokens * (profile.joules_per_input_token or 0.0)
                  + usage.output_tokens * (profile.joules_per_output_token or 0.0))
        return EnergyReading(joules=joules, source="estimated")
    if profile.watts is not None and busy_s is not None:
        return EnergyReading(joules=profile.watts * busy_s, source="estimated")
    return UNKNOWN


def measured(joules_before: float, joules_after: float) -> EnergyReading:
    """A reading from two samples of a cumulative hardware counter."""
    return EnergyReading(joules=max(0.0, joules_after - joules_before), source="measured")


def tokens_per_joule(tokens: int, reading: EnergyReading) -> float | None:
    """Tokens per joule where the energy is known and non-zero."""
    if reading.joules is None or reading.joules <= 0:
        return None
    return tokens / reading.joules
