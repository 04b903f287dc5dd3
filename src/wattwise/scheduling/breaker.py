"""A circuit breaker per replica: stop sending to a replica that keeps failing, probe it later.

States: ``closed`` (all traffic), ``open`` (none, for ``cooldown_s`` after ``failures`` failures in
a row), ``half_open`` (one probe request; its success closes the breaker, its failure re-opens it;
a probe that ends with no verdict, such as a caller's mistake, a 429 or a cancel, lets the next
request probe instead, so the breaker never stays half-open).

Usage::

    breaker = CircuitBreaker(failures=3, cooldown_s=10.0)
    if breaker.available(now):
        breaker.on_dispatch(now)
        ...
        breaker.failure(now)   # or breaker.success(), or breaker.abandon_probe() for no verdict
"""

from __future__ import annotations

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker with a cool-down and a single half-open probe."""

    __slots__ = ("consecutive", "cooldown_s", "failures", "opened_at", "state", "strikes")

    def __init__(self, *, failures: int = 5, cooldown_s: float = 30.0) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.state = CLOSED
        self.consecutive = 0
        self.strikes = 0  # failures and rate limits in a row: replica choice breaks ties away from them
        self.opened_at = 0.0

    def available(self, now: float) -> bool:
        """May a request be sent now? (Does not change state; see :meth:`on_dispatch`.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return now - self.opened_at >= self.cooldown_s
        return False  # half-open: the probe is in flight

    def on_dispatch(self, now: float) -> bool:
        """A request is being sent; after the cool-down it becomes the half-open probe (True)."""
        if self.state == OPEN and now - self.opened_at >= self.cooldown_s:
            self.state = HALF_OPEN
            return True
        return False

    def rate_limited(self) -> None:
        """The replica said 429: no mark against its health, but a retry had better go elsewhere."""
        self.strikes += 1

    def abandon_probe(self) -> None:
        """The probe ended without a verdict: back to open, its cool-down already spent, so the next
        request probes. (Left half-open, the breaker would refuse every request for good.)"""
        if self.state == HALF_OPEN:
            self.state = OPEN

    def success(self) -> None:
        self.state = CLOSED
        self.consecutive = 0
        self.strikes = 0

    def failure(self, now: float) -> None:
        self.consecutive += 1
        self.strikes += 1
        if self.state == HALF_OPEN or self.consecutive >= self.failures:
            self.state = OPEN
            self.opened_at = now
