"""The synchronous scheduler on a virtual clock: replica choice, breaker, priority, limits, preemption."""

from __future__ import annotations

from wattwise.scheduling.batchfill import BatchFiller
from wattwise.scheduling.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from wattwise.scheduling.clock import VirtualClock
from wattwise.scheduling.pool import Replica, ReplicaPool
from wattwise.scheduling.queue import BATCH, INTERACTIVE, PriorityQueue
from wattwise.scheduling.scheduler import Lease, ModelPolicy, Scheduler, Ticket


def make(replicas: int = 2, limit: int | None = None, **policy: object) -> tuple[Scheduler, VirtualClock]:
    clock = VirtualClock()
    pool = ReplicaPool(model="m", replicas=[Replica(model="m", index=i, limit=limit) for i in range(replicas)])
    return Scheduler(clock=clock, pools={"m": pool}, policies={"m": ModelPolicy(**policy)}), clock  # type: ignore[arg-type]


def test_least_outstanding_tokens_wins() -> None:
    scheduler, _ = make()
    a = scheduler.try_acquire("m", tokens=100)
    b = scheduler.try_acquire("m", tokens=50)
    c = scheduler.try_acquire("m", tokens=10)
    assert a and b and c
    assert (a.replica.index, b.replica.index, c.replica.index) == (0, 1, 1)
    scheduler.release(a)
    d = scheduler.try_acquire("m", tokens=10)
    assert d and d.replica.index == 0


def test_breaker_opens_then_probes_after_cooldown() -> None:
    breaker = CircuitBreaker(failures=2, cooldown_s=10.0)
    breaker.failure(0.0)
    assert breaker.state == CLOSED
    breaker.failure(1.0)
    assert breaker.state == OPEN and not breaker.available(5.0)
    assert breaker.available(11.0)
    breaker.on_dispatch(11.0)
    assert breaker.state == HALF_OPEN and not breaker.available(11.0)
    breaker.failure(12.0)
    assert breaker.state == OPEN and not breaker.available(20.0)
    breaker.on_dispatch(22.0)
    breaker.success()
    assert breaker.state == CLOSED


def test_open_breaker_steers_choice_to_healthy_replica() -> None:
    scheduler, clock = make()
    broken = scheduler.pool("m").replicas[0]
    broken.breaker = CircuitBreaker(failures=1, cooldown_s=5.0)
    lease = scheduler.try_acquire("m", tokens=1)
    assert lease and lease.replica is broken
    scheduler.release(lease, ok=False)
    assert all(scheduler.try_acquire("m", tokens=1).replica.index == 1 for _ in range(3))  # type: ignore[union-attr]
    clock.advance_to(6.0)
    assert scheduler.try_acquire("m", tokens=1).replica is broken  # type: ignore[union-attr]


def test_priority_queue_interactive_first_fifo_within() -> None:
    queue: PriorityQueue[str] = PriorityQueue()
    for item, prio in (("b1", BATCH), ("i1", INTERACTIVE), ("b2", BATCH), ("i2", INTERACTIVE)):
        queue.push(item, priority=prio)
    assert [queue.pop() for _ in range(5)] == ["i1", "i2", "b1", "b2", None]


def test_interactive_jumps_batch_when_a_slot_frees() -> None:
    scheduler, _ = make(replicas=1, max_concurrency=1)
    held = scheduler.try_acquire("m", tokens=1)
    assert held is not None and scheduler.headroom("m") == 0
    granted: list[str] = []

    def ticket(name: str, prio: int) -> Ticket:
        return Ticket(model="m", tokens=1, priority=prio, grant=lambda lease: granted.append(name) is None)

    for name, prio in (("batch", BATCH), ("interactive", INTERACTIVE)):
        assert scheduler.submit(ticket(name, prio)) is None
    assert scheduler.try_acquire("m", tokens=1, priority=INTERACTIVE) is None  # no jumping the queue
    scheduler.release(held)
    assert granted == ["interactive"]


def test_headroom_counts_free_slots_less_reserve_and_waiters() -> None:
    scheduler, _ = make(replicas=2, limit=4, batch_reserve=1)
    assert scheduler.headroom("m") == 7
    for _ in range(3):
        scheduler.try_acquire("m", tokens=1)
    assert scheduler.headroom("m") == 4
    assert all(scheduler.try_acquire("m", tokens=1, priority=BATCH) for _ in range(4))
    assert scheduler.headroom("m") == 0
    assert scheduler.try_acquire("m", tokens=1, priority=BATCH) is None  # the reserved slot stays free
    assert scheduler.try_acquire("m", tokens=1, priority=INTERACTIVE) is not None


def test_batch_filler_fills_and_is_preempted_by_interactive() -> None:
    scheduler, _ = make(replicas=1, limit=3, preempt_batch=True)
    started: list[str] = []
    evicted: list[str] = []
    filler = BatchFiller(scheduler=scheduler, model="m", start=lambda lease, job: started.append(job),
                         preempted=lambda lease, job: evicted.append(job))
    for job, deadline in (("late", 100.0), ("soon", 10.0), ("mid", 50.0), ("last", 200.0)):
        filler.add(job, tokens=10, deadline=deadline)
    assert filler.pump() == 3 and started == ["soon", "mid", "late"] and len(filler) == 1
    lease = scheduler.try_acquire("m", tokens=5, priority=INTERACTIVE)
    assert isinstance(lease, Lease) and evicted == ["late"] and filler.evictions == 1
    assert scheduler.headroom("m") == 0
    scheduler.release(lease)
    started.clear()
    assert filler.pump() == 1 and started == ["late"]
