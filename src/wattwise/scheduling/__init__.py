"""Scheduling: which replica serves a request, and when.

``clock`` (real or virtual time), ``breaker`` (circuit breaker per replica), ``pool`` (replicas and
least-outstanding-tokens choice), ``queue`` (interactive before batch), ``scheduler`` (leases,
per-model limits, batch preemption, ``Scheduler.headroom(model)`` for batch work), ``dispatch``
(asyncio: retries with backoff, fallback, streams), ``batchfill`` (run deferrable work in the valleys).
The simulator drives the same classes on a virtual clock.
"""
