"""Admission over the fleet: per-model concurrency limits, replica choice, priority queueing.

The :class:`Scheduler` is synchronous and clock-driven, so the gateway (real clock, asyncio) and the
simulator (virtual clock, discrete events) run exactly this code. A request asks for a *lease* on
one replica of a model. It gets one at once when the model is under its ``max_concurrency`` and a
replica has a free slot; otherwise it waits in the model's two-class queue (interactive before
batch) and is granted a lease, through its ``grant`` callback, when a slot frees.

Batch work may be *preemptible*: a batch lease made with ``on_preempt`` is evicted (its callback is
called, its slot given to the interactive request) when an interactive request finds no room and the
model's policy says ``preempt_batch``. ``batch_reserve`` keeps that many slots free of batch work.

For the Batch API and other deferrable work, ``Scheduler.headroom(model) -> int`` says how many batch
requests the model can start *now* without queueing anything interactive: the free slots over its
healthy replicas (and under ``max_concurrency``), less ``batch_reserve``, less interactive requests
already waiting; a model with no limit anywhere reports :data:`UNLIMITED`.

Usage::

    scheduler = Scheduler(clock=MonotonicClock(), pools={"m": pool},
                          policies={"m": ModelPolicy(max_concurrency=8, retries=2, fallback=("n",))})
    lease = scheduler.try_acquire("m", tokens=900, priority=INTERACTIVE)
    if lease is None:
        scheduler.submit(Ticket(model="m", tokens=900, priority=INTERACTIVE, grant=on_grant))
    ...
    scheduler.release(lease, ok=True)
    scheduler.headroom("m")          # batch requests that can start now
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wattwise.scheduling.breaker import CLOSED
from wattwise.scheduling.clock import Clock
from wattwise.scheduling.pool import Replica, ReplicaPool
from wattwise.scheduling.queue import BATCH, INTERACTIVE, PriorityQueue

UNLIMITED = 1 << 30


@dataclass(frozen=True, kw_only=True)
class ModelPolicy:
    """Limits and failure handling for one model.

    ``retries`` is the number of extra attempts on the same model (each on the best replica then),
    spaced by exponential backoff ``backoff_s · 2^attempt`` capped at ``backoff_max_s``; then the
    ``fallback`` models are tried in order. An upstream's ``Retry-After`` stretches the wait before the
    next attempt up to ``retry_after_cap_s``; asked to wait longer, dispatch stops retrying the model
    and passes the upstream's answer on (or falls back).
    """

    max_concurrency: int | None = None
    retries: int = 0
    backoff_s: float = 0.2
    backoff_max_s: float = 5.0
    retry_after_cap_s: float = 10.0
    fallback: tuple[str, ...] = ()
    preempt_batch: bool = False
    batch_reserve: int = 0

    def backoff(self, attempt: int) -> float:
        return min(self.backoff_max_s, self.backoff_s * (2.0**attempt))


class Lease:
    """A slot on one replica, held from admission to release."""

    __slots__ = ("model", "on_preempt", "priority", "probe", "prompt", "released", "replica", "tag", "tokens")

    def __init__(self, *, model: str, replica: Replica, tokens: int, priority: int, prompt: int = 0,
                 on_preempt: Callable[[Lease], None] | None = None, tag: Any = None, probe: bool = False) -> None:
        self.model = model
        self.probe = probe  # this request is its replica's half-open breaker probe
        self.replica = replica
        self.tokens = tokens
        self.prompt = prompt
        self.priority = priority
        self.on_preempt = on_preempt
        self.tag = tag
        self.released = False


class Ticket:
    """A request waiting for a lease; ``grant`` returns False when its requester has gone away."""

    __slots__ = ("cancelled", "grant", "model", "on_preempt", "priority", "prompt", "tag", "tokens")

    def __init__(self, *, model: str, tokens: int, priority: int, grant: Callable[[Lease], bool],
                 prompt: int = 0, on_preempt: Callable[[Lease], None] | None = None, tag: Any = None) -> None:
        self.model = model
        self.tokens = tokens
        self.prompt = prompt
        self.priority = priority
        self.grant = grant
        self.on_preempt = on_preempt
        self.tag = tag
        self.cancelled = False


class _ModelState:
    __slots__ = ("active", "policy", "pool", "preemptible", "queue")

    def __init__(self, pool: ReplicaPool, policy: ModelPolicy) -> None:
        self.pool = pool
        self.policy = policy
        self.active = 0
        self.queue: PriorityQueue[Ticket] = PriorityQueue()
        self.preemptible = 0  # preemptible leases over all replicas


class Scheduler:
    """Leases on replicas, per-model limits, the priority queue and batch preemption."""

    def __init__(self, *, clock: Clock, pools: dict[str, ReplicaPool],
                 policies: dict[str, ModelPolicy] | None = None) -> None:
        self.clock = clock
        policies = policies or {}
        self._models = {name: _ModelState(pool, policies.get(name, ModelPolicy()))
                        for name, pool in pools.items()}

    def __contains__(self, model: str) -> bool:
        return model in self._models

    def policy(self, model: str) -> ModelPolicy:
        return self._models[model].policy

    def pool(self, model: str) -> ReplicaPool:
        return self._models[model].pool

    def candidates(self, model: str) -> list[str]:
        """The model, then its configured fallbacks that this scheduler knows."""
        return [model, *(m for m in self._models[model].policy.fallback if m in self._models and m != model)]

    def available(self, model: str) -> bool:
        """Is any replica of ``model`` up (healthy, breaker not open)? Full replicas count as up."""
        now = self.clock.now()
        return any(r.healthy and r.breaker.available(now) for r in self._models[model].pool.replicas)

    # -- admission -----------------------------------------------------------------------------

    def try_acquire(self, model: str, *, tokens: int, priority: int = INTERACTIVE, prompt: int = 0,
                    on_preempt: Callable[[Lease], None] | None = None, tag: Any = None) -> Lease | None:
        """A lease now, or None (the caller may then :meth:`submit` a ticket and wait).

        ``tokens`` is the work the request brings (prompt plus expected output), ``prompt`` the part of
        it that leaves the replica's outstanding count at the first token (see :meth:`first_token`).
        """
        state = self._models[model]
        queue = state.queue
        if queue.waiting(INTERACTIVE) or (priority == BATCH and queue.waiting(BATCH)):
            return None  # never jump ahead of a waiter of the same or a higher class
        return self._place(state, model, tokens, priority, on_preempt, tag, prompt)

    def submit(self, ticket: Ticket) -> Lease | None:
        """Acquire now (returned, ``grant`` not called) or queue the ticket (None; ``grant`` later)."""
        lease = self.try_acquire(ticket.model, tokens=ticket.tokens, priority=ticket.priority, prompt=ticket.prompt,
                                 on_preempt=ticket.on_preempt, tag=ticket.tag)
        if lease is None:
            self._models[ticket.model].queue.push(ticket, priority=ticket.priority)
        return lease

    def release(self, lease: Lease, *, ok: bool | None = None) -> None:
        """Free the lease's slot; ``ok`` feeds the replica's breaker (None: no verdict)."""
        if lease.released:
            return
        state = self._models[lease.model]
        self._free(state, lease)
        if ok is True:
            lease.replica.breaker.success()
        elif ok is False:
            lease.replica.breaker.failure(self.clock.now())
        elif lease.probe:
            lease.replica.breaker.abandon_probe()
        if state.queue:
            self._drain(state, lease.model)

    def first_token(self, lease: Lease) -> None:
        """The prompt is processed: its tokens no longer weigh on the replica's queue of prefill work."""
        if lease.prompt and not lease.released:
            if lease.on_preempt is None:
                lease.replica.outstanding -= lease.prompt
            lease.tokens -= lease.prompt
            lease.prompt = 0

    def headroom(self, model: str) -> int:
        """Batch requests ``model`` can start now without making interactive work wait."""
        state = self._models[model]
        free = state.pool.free_slots(self.clock.now())
        limit = state.policy.max_concurrency
        if limit is not None:
            free = limit - state.active if free is None else min(free, limit - state.active)
        if free is None:
            return UNLIMITED
        return max(0, free - state.policy.batch_reserve - state.queue.waiting(INTERACTIVE))

    def waiting(self, model: str, priority: int = INTERACTIVE) -> int:
        return self._models[model].queue.waiting(priority)

    def describe(self) -> dict[str, Any]:
        return {name: {"active": s.active, "waiting": len(s.queue),
                       "replicas": [r.describe() for r in s.pool.replicas]} for name, s in self._models.items()}

    # -- internals -----------------------------------------------------------------------------

    def _place(self, state: _ModelState, model: str, tokens: int, priority: int,
               on_preempt: Callable[[Lease], None] | None, tag: Any, prompt: int = 0) -> Lease | None:
        policy = state.policy
        now = self.clock.now()
        replica: Replica | None = None
        over_limit = policy.max_concurrency is not None and state.active >= policy.max_concurrency
        preempt = priority == INTERACTIVE and policy.preempt_batch and state.preemptible > 0
        if not over_limit:
            replica = state.pool.choose(now, preempt=preempt)
            if replica is not None and replica.limit is not None and replica.in_flight >= replica.limit:
                self._evict_on(state, replica)
        if priority == BATCH and replica is not None and policy.batch_reserve:
            free = state.pool.free_slots(now)
            if free is not None and free <= policy.batch_reserve:
                return None
        if replica is None:
            if not preempt:
                return None
            replica = self._evict(state, now)
            if replica is None:
                return None
        probe = replica.breaker.state != CLOSED and replica.breaker.on_dispatch(now)
        replica.in_flight += 1
        if on_preempt is None:  # evictable batch work is not in an interactive request's way
            replica.outstanding += tokens
        state.active += 1
        lease = Lease(model=model, replica=replica, tokens=tokens, priority=priority, prompt=prompt,
                      on_preempt=on_preempt, tag=tag, probe=probe)
        if on_preempt is not None:
            replica.preemptible[lease] = None
            state.preemptible += 1
        return lease

    def _evict(self, state: _ModelState, now: float) -> Replica | None:
        """Preempt the newest batch lease on the replica the pool's choice prefers among those running
        batch work (least outstanding tokens per weight); that replica takes the newcomer."""
        best: Replica | None = None
        for replica in state.pool.replicas:
            if replica.preemptible and replica.healthy and replica.breaker.available(now) and (
                    best is None or replica.outstanding / replica.weight < best.outstanding / best.weight):
                best = replica
        if best is not None:
            self._evict_on(state, best)
        return best

    def _evict_on(self, state: _ModelState, replica: Replica) -> None:
        """Preempt the newest batch lease on ``replica`` (vLLM, too, preempts the newest first)."""
        victim, _ = replica.preemptible.popitem()
        state.preemptible -= 1
        self._free(state, victim)
        assert victim.on_preempt is not None
        victim.on_preempt(victim)

    def _free(self, state: _ModelState, lease: Lease) -> None:
        lease.released = True
        replica = lease.replica
        replica.in_flight -= 1
        state.active -= 1
        if lease.on_preempt is None:
            replica.outstanding -= lease.tokens
        elif replica.preemptible.pop(lease, 0) is None:
            state.preemptible -= 1

    def _drain(self, state: _ModelState, model: str) -> None:
        queue = state.queue
        while queue:
            ticket = queue.pop()
            assert ticket is not None
            if ticket.cancelled:
                continue
            lease = self._place(state, model, ticket.tokens, ticket.priority, ticket.on_preempt, ticket.tag,
                                ticket.prompt)
            if lease is None:
                queue.push_front(ticket, priority=ticket.priority)
                return
            if not ticket.grant(lease):
                self._free(state, lease)
