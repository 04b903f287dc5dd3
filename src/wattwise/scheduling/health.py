"""Active health checks: probe every replica on a timer and mark it up or down.

A replica whose probe fails is skipped by replica choice until a probe succeeds again; passive
checks (the circuit breaker) still act on real traffic in between. Backends without a probe
(``Backend.health`` returns ``None``) are left alone.

Usage::

    checker = HealthChecker(scheduler=dispatcher.scheduler, interval_s=10.0)
    await checker.probe_all()      # once, e.g. in a test
    checker.start(); ...; await checker.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from wattwise.scheduling.pool import Replica
from wattwise.scheduling.scheduler import Scheduler

log = logging.getLogger(__name__)


class HealthChecker:
    def __init__(self, *, scheduler: Scheduler, interval_s: float = 10.0, timeout_s: float = 2.0) -> None:
        self.scheduler = scheduler
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._task: asyncio.Task[None] | None = None

    def replicas(self) -> list[Replica]:
        return [r for name in self.scheduler.describe() for r in self.scheduler.pool(name).replicas]

    async def _probe(self, replica: Replica) -> None:
        probe = getattr(replica.backend, "health", None)
        if probe is None:
            return
        try:
            ok = await asyncio.wait_for(probe(), timeout=self.timeout_s)
        except Exception as exc:
            log.debug("health probe of %s[%d] failed: %s", replica.model, replica.index, exc)
            ok = False
        if ok is None:
            return
        if ok != replica.healthy:
            log.warning("replica %s[%d] is now %s", replica.model, replica.index, "up" if ok else "down")
        replica.healthy = bool(ok)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe(r) for r in self.replicas()))

    async def _run(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="wattwise-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
