"""Shared state for access control: budget reservations and rate-limit windows.

Budgets and rate limits must hold across every request a gateway serves at once, and across
replicas. The operations they need are few and each is atomic in the implementation:

* ``reserve(bucket, amount, limit)``: add ``amount`` to the bucket's in-flight reservations only if
  settled spend + reservations + ``amount`` stays within ``limit``;
* ``settle(bucket, reserved, actual)``: the request ended: drop its reservation, add what it cost
  (``release`` is ``settle`` with ``actual=0``);
* ``seed(bucket, used)``: set the bucket's settled spend if the state has none for it yet (the
  durable record in the store is the source; see below);
* ``hit(window, cost, limit, window_s)``: a fixed-window counter (requests or tokens per minute),
  incremented only when within ``limit``; ``refund`` gives a hit back.

Buckets and windows are plain strings chosen by :mod:`wattwise.access.budgets` and
:mod:`wattwise.access.limits` (they carry the period's start, so a new period is a new bucket and
``expires_at`` lets a shared store drop old ones).

**After a restart.** The store (``spend`` table) is the durable record: a row is written when a
request's reservation is taken (at the worst case) and rewritten with the metered figure when it
settles. The first time a process touches a bucket it sums the store's rows for that bucket's
period (a row still marked reserved, left by a process killed mid-request, counts at its worst
case) and calls ``seed``, which only sets a bucket the shared state does not already hold: an
in-process state starts empty after a restart and is seeded; a Redis state that survived keeps its
own figures, which include other replicas' reservations.

Usage::

    state = open_state("")                        # in-process; "redis://host:6379/0" for Redis
    await state.seed("key:k1:usd:month:1764547200", used=3.5, expires_at=t_end)
    ok = await state.reserve("key:k1:usd:month:1764547200", amount=0.02, limit=200.0, expires_at=t_end)
    await state.settle("key:k1:usd:month:1764547200", reserved=0.02, actual=0.004)
    hit = await state.hit("rpm:k1", cost=1, limit=600, window_s=60.0)
    hit.allowed, hit.remaining, hit.reset_s
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from wattwise.exceptions import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    """The answer to :meth:`SharedState.reserve`: taken or not, and the bucket's figures after it."""

    ok: bool
    used: float
    reserved: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Hit:
    """The answer to :meth:`SharedState.hit`: allowed or not, what is left and when the window resets."""

    allowed: bool
    remaining: float
    reset_s: float


@runtime_checkable
class SharedState(Protocol):
    """Atomic budget reservations and rate-limit windows; in-process by default, Redis by URL.

    Every method is atomic on its own: two requests racing for the last of a budget cannot both
    get it, wherever they run. ``expires_at`` (epoch seconds, ``None`` = never) lets the state
    forget a bucket once its period is over.
    """

    async def seed(self, bucket: str, *, used: float, expires_at: float | None) -> bool:
        """Set the bucket's settled spend unless it is already known; ``True`` if it was set."""
        ...

    async def known(self, bucket: str) -> bool:
        """Whether the state holds this bucket (else it must be seeded from the store first)."""
        ...

    async def reserve(self, bucket: str, *, amount: float, limit: float,
                      expires_at: float | None) -> Reservation:
        """Reserve ``amount`` if ``used + reserved + amount <= limit``; all or nothing."""
        ...

    async def settle(self, bucket: str, *, reserved: float, actual: float) -> None:
        """Release a reservation of ``reserved`` and add ``actual`` to the settled spend."""
        ...

    async def usage(self, bucket: str) -> tuple[float, float]:
        """``(used, reserved)`` for a bucket (zeros when unknown)."""
        ...

    async def hit(self, window: str, *, cost: float, limit: float, window_s: float) -> Hit:
        """Count ``cost`` in the current fixed window of ``window_s`` if it stays within ``limit``."""
        ...

    async def refund(self, window: str, *, cost: float, window_s: float) -> None:
        """Give back ``cost`` counted by :meth:`hit` in the current window (a later check refused)."""
        ...

    async def aclose(self) -> None:
        """Release connections (nothing for the in-process state)."""
        ...


class InProcessState:
    """:class:`SharedState` in this process's memory: correct for one replica (the default).

    A lock makes each operation atomic even if called from several threads; on the event loop the
    operations never wait, so they are atomic there anyway.

    >>> import asyncio
    >>> s = InProcessState()
    >>> asyncio.run(s.reserve("b", amount=3, limit=5, expires_at=None)).ok
    True
    >>> asyncio.run(s.reserve("b", amount=3, limit=5, expires_at=None)).ok
    False
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        # bucket → [used, reserved, expires_at]
        self._buckets: dict[str, list[float]] = {}
        # window name → (window start, count)
        self._windows: dict[str, tuple[float, float]] = {}

    def _bucket(self, bucket: str) -> list[float] | None:
        entry = self._buckets.get(bucket)
        if entry is not None and entry[2] <= self.clock():
            del self._buckets[bucket]
            return None
        return entry

    async def seed(self, bucket: str, *, used: float, expires_at: float | None) -> bool:
        with self._lock:
            if self._bucket(bucket) is not None:
                return False
            self._buckets[bucket] = [used, 0.0, math.inf if expires_at is None else expires_at]
            return True

    async def known(self, bucket: str) -> bool:
        with self._lock:
            return self._bucket(bucket) is not None

    async def reserve(self, bucket: str, *, amount: float, limit: float,
                      expires_at: float | None) -> Reservation:
        with self._lock:
            entry = self._bucket(bucket)
            if entry is None:
                entry = self._buckets[bucket] = [0.0, 0.0, math.inf if expires_at is None else expires_at]
            ok = entry[0] + entry[1] + amount <= limit
            if ok:
                entry[1] += amount
            return Reservation(ok=ok, used=entry[0], reserved=entry[1])

    async def settle(self, bucket: str, *, reserved: float, actual: float) -> None:
        with self._lock:
            entry = self._bucket(bucket)
            if entry is None:
                return  # the period ended while the request ran: its spend belongs to the store only
            entry[1] = max(0.0, entry[1] - reserved)
            entry[0] += actual

    async def usage(self, bucket: str) -> tuple[float, float]:
        with self._lock:
            entry = self._bucket(bucket)
            return (entry[0], entry[1]) if entry else (0.0, 0.0)

    def _window(self, window: str, window_s: float) -> tuple[float, float]:
        start = self.clock() // window_s * window_s
        begun, count = self._windows.get(window, (start, 0.0))
        return (start, 0.0) if begun != start else (start, count)

    async def hit(self, window: str, *, cost: float, limit: float, window_s: float) -> Hit:
        with self._lock:
            start, count = self._window(window, window_s)
            allowed = count + cost <= limit
            if allowed:
                count += cost
            self._windows[window] = (start, count)
            if len(self._windows) > 100_000:
                self._forget_windows(window_s)
            return Hit(allowed=allowed, remaining=max(0.0, limit - count), reset_s=start + window_s - self.clock())

    async def refund(self, window: str, *, cost: float, window_s: float) -> None:
        with self._lock:
            start, count = self._window(window, window_s)
            self._windows[window] = (start, max(0.0, count - cost))

    def _forget_windows(self, window_s: float) -> None:
        current = self.clock() // window_s * window_s
        self._windows = {k: v for k, v in self._windows.items() if v[0] >= current}

    async def aclose(self) -> None:
        return None


def open_state(url: str, *, timeout_s: float = 2.0, limits_fail_open: bool = True) -> SharedState:
    """The shared state named by ``[state] url``: ``""`` in-process, ``redis://…`` Redis (``timeout_s``
    and ``limits_fail_open``: see :class:`~wattwise.access.redis_state.RedisState`)."""
    if not url:
        return InProcessState()
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            from wattwise.access.redis_state import RedisState  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ConfigError(f"[state] url {url!r} needs the Redis state: {exc}", key="state.url") from None
        state: SharedState = RedisState(url=url, timeout_s=timeout_s, limits_fail_open=limits_fail_open)
        return state
    raise ConfigError("[state] url must be empty (in-process) or start with redis://", key="state.url")
