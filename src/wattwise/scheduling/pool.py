"""Replicas of one model and the choice among them.

A replica counts what it has in flight: requests and *outstanding tokens* (prompt tokens plus the
tokens still expected out, as estimated when the request was admitted). The default choice is the
healthy replica, with a free slot, that has the least outstanding tokens per unit of weight (on a
tie, the one with fewer failures or 429s in a row, so a retry goes elsewhere).

Usage::

    pool = ReplicaPool(model="m", replicas=[Replica(model="m", index=0, limit=64),
                                            Replica(model="m", index=1, limit=64)])
    replica = pool.choose(now=0.0)        # None when every replica is full or its breaker is open
"""

from __future__ import annotations

from typing import Any

from wattwise.scheduling.breaker import CLOSED, CircuitBreaker

CHOICES = ("least-tokens", "least-requests", "round-robin")


class Replica:
    """One serving endpoint of a model; ``backend`` is opaque here (the gateway's Backend, or none)."""

    __slots__ = ("backend", "breaker", "healthy", "in_flight", "index", "limit", "model", "outstanding",
                 "preemptible", "weight")

    def __init__(self, *, model: str, index: int, backend: Any = None, weight: float = 1.0,
                 limit: int | None = None, breaker: CircuitBreaker | None = None) -> None:
        self.model = model
        self.index = index
        self.backend = backend
        self.weight = weight
        self.limit = limit
        self.breaker = breaker or CircuitBreaker()
        self.healthy = True
        self.in_flight = 0
        self.outstanding = 0
        self.preemptible: dict[Any, None] = {}  # batch leases the scheduler may evict, oldest first

    def has_room(self) -> bool:
        return self.limit is None or self.in_flight < self.limit

    def describe(self) -> dict[str, Any]:
        return {"index": self.index, "in_flight": self.in_flight, "outstanding_tokens": self.outstanding,
                "breaker": self.breaker.state, "healthy": self.healthy}


class ReplicaPool:
    """The replicas of one model and the policy that picks one (``least-tokens`` by default)."""

    __slots__ = ("_next", "choice", "model", "replicas")

    def __init__(self, *, model: str, replicas: list[Replica], choice: str = "least-tokens") -> None:
        if choice not in CHOICES:
            raise ValueError(f"unknown replica choice {choice!r} (known: {', '.join(CHOICES)})")
        self.model = model
        self.replicas = replicas
        self.choice = choice
        self._next = 0

    def choose(self, now: float, *, preempt: bool = False) -> Replica | None:
        """The replica to send the next request to, or None when none can take one now.

        With ``preempt``, a full replica that runs preemptible batch work counts as having room.
        """
        if self.choice == "round-robin":
            return self._round_robin(now)
        by_tokens = self.choice == "least-tokens"
        best: Replica | None = None
        best_key = 0.0
        for replica in self.replicas:
            # Inlined checks: the simulator calls this once per request, millions of times.
            limit = replica.limit
            if limit is not None and replica.in_flight >= limit and not (preempt and replica.preemptible):
                continue
            breaker = replica.breaker
            if breaker.state != CLOSED and not breaker.available(now):
                continue
            if not replica.healthy:
                continue
            key = (replica.outstanding if by_tokens else replica.in_flight) / replica.weight
            if best is None or key < best_key or (
                    key == best_key and breaker.strikes < best.breaker.strikes):
                best, best_key = replica, key  # on a tie, the replica that failed (or said 429) least recently
        return best

    def _round_robin(self, now: float) -> Replica | None:
        count = len(self.replicas)
        for step in range(count):
            replica = self.replicas[(self._next + step) % count]
            if replica.has_room() and replica.healthy and replica.breaker.available(now):
                self._next = (replica.index + 1) % count
                return replica
        return None

    def free_slots(self, now: float) -> int | None:
        """Free slots over the replicas that can take work now; None when some replica is unlimited."""
        total = 0
        for replica in self.replicas:
            if not replica.healthy or not replica.breaker.available(now):
                continue
            if replica.limit is None:
                return None
            total += max(0, replica.limit - replica.in_flight)
        return total
