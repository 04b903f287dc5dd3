"""Deferrable work in the valleys: start batch jobs whenever a model has headroom.

A :class:`BatchFiller` holds a backlog ordered by deadline (earliest first) and, each time it is
``pump``-ed, starts as many jobs as :meth:`Scheduler.headroom` allows, as preemptible batch leases:
when interactive traffic returns, the scheduler evicts them and the filler puts them back at the
front of the backlog. The simulator pumps it after every event; a Batch API runner can pump it on a
timer.

Usage::

    filler = BatchFiller(scheduler=scheduler, model="m", start=run_job)
    filler.add(job, tokens=1200, deadline=86_400.0)
    filler.pump()                   # starts what fits now; run_job(lease, job) is called for each
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import Any

from wattwise.scheduling.queue import BATCH
from wattwise.scheduling.scheduler import Lease, Scheduler


class BatchFiller:
    """Earliest-deadline-first backlog that fills a model's headroom with preemptible batch leases."""

    def __init__(self, *, scheduler: Scheduler, model: str, start: Callable[[Lease, Any], None],
                 preempted: Callable[[Lease, Any], None] | None = None, preemptible: bool = True,
                 source: Iterator[tuple[Any, int, float]] | None = None, pending: int = 0) -> None:
        self.scheduler = scheduler
        self.model = model
        self.start = start
        self.preempted = preempted
        self.preemptible = preemptible
        self._backlog: list[tuple[float, int, int, Any]] = []
        # Jobs not yet listed, as (job, tokens, deadline) in deadline order, taken when the list runs dry:
        # a backlog of millions costs nothing until it runs.
        self._source = source
        self._pending = pending if source is not None else 0
        self._seq = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._backlog) + self._pending

    def add(self, job: Any, *, tokens: int, deadline: float) -> None:
        self._seq += 1
        heapq.heappush(self._backlog, (deadline, self._seq, tokens, job))

    def pump(self) -> int:
        """Start backlog jobs while the model has headroom; returns how many started."""
        scheduler, backlog = self.scheduler, self._backlog
        if not backlog and not self._pending:
            return 0
        room = scheduler.headroom(self.model)
        started = 0
        on_preempt = self._on_preempt if self.preemptible else None
        while started < room:
            if not backlog and not self._refill():
                break
            deadline, seq, tokens, job = backlog[0]
            lease = scheduler.try_acquire(self.model, tokens=tokens, priority=BATCH, on_preempt=on_preempt,
                                          tag=(deadline, seq, job))
            if lease is None:
                break
            heapq.heappop(backlog)
            started += 1
            self.start(lease, job)
        return started

    def _refill(self) -> bool:
        if not self._pending or self._source is None:
            return False
        job, tokens, deadline = next(self._source)
        self._pending -= 1
        self.add(job, tokens=tokens, deadline=deadline)
        return True

    def _on_preempt(self, lease: Lease) -> None:
        deadline, seq, job = lease.tag
        self.evictions += 1
        if self.preempted is not None:
            self.preempted(lease, job)
        heapq.heappush(self._backlog, (deadline, seq, lease.tokens, job))
