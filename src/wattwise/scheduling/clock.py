"""The clock the scheduler reads: real time in the gateway, virtual time in the simulator.

The same scheduling classes run in both; only the clock differs. A clock has ``now()`` (seconds,
monotonic) and ``sleep(seconds)`` (awaited between retries).

Usage::

    clock = MonotonicClock()            # the gateway
    clock = VirtualClock(start=0.0)     # the simulator and tests: time moves when told
    clock.advance_to(12.5)
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """What the scheduler needs of time."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """Wall time from ``time.monotonic``; ``sleep`` is ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class VirtualClock:
    """Time that moves only when told; ``sleep`` moves it at once and records how long was slept."""

    __slots__ = ("slept", "t")

    def __init__(self, *, start: float = 0.0) -> None:
        self.t = start
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def advance_to(self, t: float) -> None:
        if t > self.t:
            self.t = t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += max(0.0, seconds)
