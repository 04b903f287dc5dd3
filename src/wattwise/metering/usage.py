"""Token usage of one call, as the backend reported it.

Usage::

    u = Usage(input_tokens=120, cached_input_tokens=100, output_tokens=40, reasoning_tokens=10)
    u + u   # sums two calls (a cascade pays for both)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Token counts; ``output_tokens`` includes ``reasoning_tokens`` as in OpenAI's usage object."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )

    @classmethod
    def from_openai(cls, usage: dict[str, Any] | None) -> Usage:
        """Read an OpenAI ``usage`` object, including cached and reasoning token details.

        Both shapes: Chat Completions (``prompt_tokens`` …) and Responses (``input_tokens`` …).
        """
        if not usage:
            return cls()
        if "prompt_tokens" not in usage and "input_tokens" in usage:
            prompt_details = usage.get("input_tokens_details") or {}
            completion_details = usage.get("output_tokens_details") or {}
            return cls(input_tokens=int(usage.get("input_tokens") or 0),
                       cached_input_tokens=int(prompt_details.get("cached_tokens") or 0),
                       output_tokens=int(usage.get("output_tokens") or 0),
                       reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0))
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return cls(
            input_tokens=int(usage.get("prompt_tokens") or 0),
            cached_input_tokens=int(prompt_details.get("cached_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
        )

    def to_openai(self) -> dict[str, Any]:
        """This usage as OpenAI's ``usage`` object."""
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_input_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }
