"""The gateway's side of scheduling: wait for a lease, call the replica, retry, fall back.

:class:`Dispatcher` wraps the synchronous :class:`~wattwise.scheduling.scheduler.Scheduler` for
asyncio. A call is tried on the requested model (``1 + retries`` attempts, with exponential backoff
between them, each on the replica the scheduler picks then), then on each ``fallback`` model in turn.
Only upstream failures that another attempt could cure are retried (5xx, timeouts, 429); the
caller's own mistakes are not. A stream is retried only before its first event has been passed on.

Rate limits: an upstream's ``Retry-After`` lengthens the wait before the next attempt, up to the
model's ``retry_after_cap_s``; asked to wait longer, dispatch stops retrying that model and passes the
429 (typed ``rate_limit_error``, with the upstream's ``retry-after`` and ``x-ratelimit-*`` headers in
``exc.headers``) on, leaving the wait to the client. 429s say nothing about a replica's health, so they
never feed its circuit breaker.

The breaker counts requests, not attempts: a request charges each replica it failed on once, however
many of its attempts went there. A model whose replicas are all broken is skipped at once.

When dispatch gives up on an upstream failure (5xx, timeout, 429, breaker open) it has already made
the retry decision, so the raised error carries ``x-should-retry: false`` in ``exc.headers``: the
OpenAI SDKs honour it, so their own retries do not multiply upstream calls. The one exception is a
``Retry-After`` over the cap, which is the client's to wait out.

Usage::

    dispatcher = Dispatcher.from_backends({"m": MockBackend(name="m")})
    trail = Trail()
    completion = await dispatcher.complete("m", request, priority=INTERACTIVE, trail=trail)
    trail.model, trail.notes          # who answered, and what went wrong on the way

    try:
        await dispatcher.complete("m", request)
    except BackendError as exc:
        exc.headers                       # e.g. {"retry-after": "2", "x-should-retry": "false"}
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from wattwise.backends.base import Backend, ChatRequest, Completion, StreamEvent
from wattwise.exceptions import (
    BackendError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    WattwiseError,
)
from wattwise.scheduling.breaker import CircuitBreaker
from wattwise.scheduling.clock import Clock, MonotonicClock
from wattwise.scheduling.pool import Replica, ReplicaPool
from wattwise.scheduling.queue import INTERACTIVE
from wattwise.scheduling.scheduler import Lease, ModelPolicy, Scheduler, Ticket

T = TypeVar("T")
S = TypeVar("S")


class Unavailable(UpstreamError):
    """Every replica of a model has its circuit breaker open or is marked unhealthy."""

    code = "model_unavailable"


def retryable(exc: BaseException) -> bool:
    """Could another attempt (or another model) cure this failure?"""
    if isinstance(exc, UpstreamRejected):
        return exc.status == 429
    return isinstance(exc, UpstreamError | UpstreamTimeout)


def breaker_verdict(exc: BaseException) -> bool | None:
    """Does this failure count against the replica? The caller's mistakes and rate limits do not."""
    if isinstance(exc, UpstreamRejected):
        return None
    return False if isinstance(exc, BackendError) else None


def retry_delay(policy: ModelPolicy, attempt: int, exc: WattwiseError) -> float | None:
    """Seconds to wait after failed ``attempt`` (0-based): the backoff, or the upstream's longer
    ``Retry-After``; None when the upstream asks for more than ``policy.retry_after_cap_s``."""
    delay = policy.backoff(attempt)
    hint = exc.retry_after_s if isinstance(exc, BackendError) else None
    if hint is not None and hint > 0:
        if hint > policy.retry_after_cap_s:
            return None
        delay = max(delay, hint)
    return delay


def as_rate_limit(exc: WattwiseError) -> WattwiseError:
    """An upstream 429 raised as a plain :class:`UpstreamRejected` becomes :class:`UpstreamRateLimited`."""
    if type(exc) is UpstreamRejected and exc.status == 429:
        return UpstreamRateLimited(exc.message, param=exc.param, headers=exc.headers,
                                   retry_after_s=exc.retry_after_s)
    return exc


def advise_client(exc: WattwiseError, *, client_may_wait: bool) -> WattwiseError:
    """Tell the client whether to retry a failure dispatch gave up on (the OpenAI SDKs read
    ``x-should-retry``). Not retryable: no advice; the SDKs do not retry a caller's mistake anyway."""
    if isinstance(exc, BackendError) and retryable(exc):
        if client_may_wait:
            exc.headers.pop("x-should-retry", None)
        else:
            exc.headers["x-should-retry"] = "false"
    return exc


@dataclass(kw_only=True)
class Trail:
    """What dispatch did for one call: the model that answered, its replica, and each failure."""

    model: str | None = None
    replica: int | None = None
    attempts: int = 0
    notes: list[str] = field(default_factory=list)

    def fell_back(self, requested: str) -> bool:
        return self.model is not None and self.model != requested


def estimate_tokens(request: ChatRequest) -> int:
    """Tokens a request will hold on a replica: prompt (≈4 characters a token) plus its output cap."""
    return len(request.prompt_text()) // 4 + (request.max_tokens or 256)


class Dispatcher:
    """Leases, retries, backoff and fallback over the scheduler, for the asyncio gateway."""

    def __init__(self, *, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    @classmethod
    def from_backends(cls, backends: dict[str, Backend], *, clock: Clock | None = None) -> Dispatcher:
        """One replica per backend, no limits, no retries: plain pass-through dispatch."""
        pools = {name: ReplicaPool(model=name, replicas=[Replica(model=name, index=0, backend=b)])
                 for name, b in backends.items()}
        return cls(scheduler=Scheduler(clock=clock or MonotonicClock(), pools=pools))

    @classmethod
    def from_replicas(cls, replicas: dict[str, list[tuple[Backend, float]]], *,
                      policies: dict[str, ModelPolicy], breakers: dict[str, tuple[int, float]],
                      clock: Clock | None = None) -> Dispatcher:
        """Pools from ``model → [(backend, weight)]``; ``breakers``: ``model → (failures, cooldown_s)``."""
        pools = {}
        for name, members in replicas.items():
            failures, cooldown = breakers.get(name, (5, 30.0))
            pools[name] = ReplicaPool(model=name, replicas=[
                Replica(model=name, index=i, backend=backend, weight=weight,
                        breaker=CircuitBreaker(failures=failures, cooldown_s=cooldown))
                for i, (backend, weight) in enumerate(members)])
        return cls(scheduler=Scheduler(clock=clock or MonotonicClock(), pools=pools, policies=policies))

    def backends(self) -> list[Backend]:
        """Every replica's backend, each once."""
        seen: dict[int, Backend] = {}
        for name in self.scheduler.describe():
            for replica in self.scheduler.pool(name).replicas:
                seen.setdefault(id(replica.backend), replica.backend)
        return list(seen.values())

    async def aclose(self) -> None:
        for backend in self.backends():
            await backend.aclose()

    # -- leases --------------------------------------------------------------------------------

    async def acquire(self, model: str, *, tokens: int, priority: int = INTERACTIVE, prompt: int = 0) -> Lease:
        """A lease on a replica of ``model``, waiting in the priority queue when all are busy."""
        scheduler = self.scheduler
        if not scheduler.available(model):
            raise Unavailable(f"every replica of {model!r} is unavailable (circuit open)")
        lease = scheduler.try_acquire(model, tokens=tokens, priority=priority, prompt=prompt)
        if lease is not None:
            return lease
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()

        def grant(granted: Lease) -> bool:
            if future.done():
                return False
            future.set_result(granted)
            return True

        ticket = Ticket(model=model, tokens=tokens, priority=priority, grant=grant, prompt=prompt)
        scheduler.submit(ticket)
        try:
            return await future
        except asyncio.CancelledError:
            ticket.cancelled = True
            raise

    # -- calls ---------------------------------------------------------------------------------

    async def complete(self, model: str, request: ChatRequest, *, priority: int = INTERACTIVE,
                       trail: Trail | None = None, fallback: bool = True) -> Completion:
        """One completion, retried and falling back as the models' policies say."""

        async def once(backend: Backend) -> Completion:
            return await backend.complete(request)

        _, done = await self._attempts(model, request, priority, trail or Trail(), fallback, once)
        return done

    async def run(self, model: str, request: ChatRequest, once: Callable[[Backend], Awaitable[T]], *,
                  priority: int = INTERACTIVE, trail: Trail | None = None) -> T:
        """Any one-shot call (``once(backend)``) with the same leases, retries and fallback as ``complete``."""
        _, done = await self._attempts(model, request, priority, trail or Trail(), True, once)
        return done

    def stream(self, model: str, request: ChatRequest, *, priority: int = INTERACTIVE,
               trail: Trail | None = None) -> AsyncGenerator[StreamEvent, None]:
        """Stream events; failures before the first event are retried and fall back like ``complete``.

        ``trail.model`` is set before the first event is yielded; the lease is held to the end.
        """
        return self.stream_with(model, request, lambda backend: backend.stream(request), priority=priority,
                                trail=trail)

    async def stream_with(self, model: str, request: ChatRequest, open_stream: Callable[[Backend], AsyncIterator[S]],
                          *, priority: int = INTERACTIVE, trail: Trail | None = None) -> AsyncGenerator[S, None]:
        """Any stream (``open_stream(backend)``: chat events, or a forwarded endpoint's lines) with the
        same leases, retries before the first item, fallback and breaker accounting as ``stream``."""

        async def open_first(backend: Backend) -> tuple[AsyncIterator[S], S | None]:
            events = open_stream(backend)
            try:
                return events, await events.__anext__()
            except StopAsyncIteration:
                return events, None
            except BaseException:
                await _close(events)
                raise

        charged: list[Replica] = []
        lease, (events, first) = await self._attempts(model, request, priority, trail or Trail(), True,
                                                      open_first, hold=True, charged=charged)
        ok: bool | None = True
        self.scheduler.first_token(lease)
        try:
            if first is not None:
                yield first
                async for event in events:
                    yield event
        except WattwiseError as exc:
            ok = breaker_verdict(exc)
            if ok is False and lease.replica in charged and not lease.probe:
                ok = None  # this request already counted against the replica before its first event
            raise
        except BaseException:
            ok = None
            raise
        finally:
            self.scheduler.release(lease, ok=ok)
            await _close(events)

    async def _attempts(self, model: str, request: ChatRequest, priority: int, trail: Trail,
                        fallback: bool, once: Callable[[Backend], Awaitable[T]], *,
                        hold: bool = False, charged: list[Replica] | None = None) -> tuple[Lease, T]:
        tokens = estimate_tokens(request)
        prompt = len(request.prompt_text()) // 4
        last: WattwiseError | None = None
        if charged is None:
            charged = []  # replicas this request has already counted a failure against
        client_may_wait = False  # the last failure asked for a wait over the cap: the client's to make
        for name in self.scheduler.candidates(model) if fallback else [model]:
            policy = self.scheduler.policy(name)
            delay: float | None = 0.0
            for attempt in range(policy.retries + 1):
                if attempt:
                    await self.scheduler.clock.sleep(delay or 0.0)
                try:
                    lease = await self.acquire(name, tokens=tokens, priority=priority, prompt=prompt)
                except Unavailable as exc:
                    trail.notes.append(f"{name}: {exc.message}")
                    last, client_may_wait = exc, False
                    break
                trail.attempts += 1
                try:
                    result = await once(lease.replica.backend)
                except WattwiseError as exc:
                    failure = as_rate_limit(exc)
                    self._release_failed(lease, failure, charged)
                    trail.notes.append(f"{name}#{lease.replica.index}: {type(failure).__name__}: {failure.message}")
                    if not retryable(failure):
                        raise  # as_rate_limit only retypes 429s, which are retryable
                    last, delay = failure, retry_delay(policy, attempt, failure)
                    client_may_wait = delay is None
                    if client_may_wait:
                        trail.notes.append(f"{name}: upstream asks to wait over {policy.retry_after_cap_s:g}s")
                        break
                    continue
                except BaseException:
                    self.scheduler.release(lease)
                    raise
                if not hold:
                    self.scheduler.release(lease, ok=True)
                trail.model, trail.replica = name, lease.replica.index
                return lease, result
        assert last is not None
        raise advise_client(last, client_may_wait=client_may_wait)

    def _release_failed(self, lease: Lease, exc: WattwiseError, charged: list[Replica]) -> None:
        """Free a failed attempt's lease, charging its replica's breaker once per request (a probe's
        failure always counts: it must re-open the breaker)."""
        ok = breaker_verdict(exc)
        if ok is False:
            if lease.replica in charged and not lease.probe:
                ok = None
            else:
                charged.append(lease.replica)
        elif isinstance(exc, UpstreamRateLimited):
            lease.replica.breaker.rate_limited()
        self.scheduler.release(lease, ok=ok)


async def _close(events: AsyncIterator[Any]) -> None:
    closer = getattr(events, "aclose", None)
    if closer is not None:
        await closer()
