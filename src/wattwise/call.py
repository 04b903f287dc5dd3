"""One request's life, owned by one object from acceptance to its trace row.

A :class:`Call` is opened by :meth:`wattwise.gateway.Gateway.call` and is an async context manager,
the way httpx's client owns a streamed response: whatever way the request ends (an answer, an
error, an exception nobody expected, the client gone, the server shutting down), leaving the context
or calling :meth:`Call.close` releases its in-flight count, writes its trace row exactly once, and
maps the failure to the :class:`~wattwise.exceptions.WattwiseError` the client should see.

The call holds only what it uses: a ``decide`` function, the dispatcher, the :class:`Meter` and the
:class:`Recorder`. The HTTP layer and the batch runner both go through it, so neither writes a
trace row or maps an internal error by hand.

Usage::

    async with gateway.call(body, request_id="req_1", tag=None) as call:
        outcome = await call.complete()          # or: async for event in call.stream(): ...
    # an unexpected exception inside leaves as InternalError (500), recorded with its cause
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Protocol, TypeVar

from wattwise.backends.base import ChatRequest, Completion, StreamEvent
from wattwise.cache.cache import Hit, Plan, ResponseCache
from wattwise.cache.entry import StreamAnswer
from wattwise.exceptions import InternalError, InvalidRequest, WattwiseError
from wattwise.metering.energy import UNKNOWN, EnergyProfile, EnergyReading, estimate
from wattwise.metering.pricing import Price, cost_usd
from wattwise.metering.usage import Usage
from wattwise.metrics import Metrics
from wattwise.request import ChatBody
from wattwise.scheduling.dispatch import Dispatcher, Trail
from wattwise.scheduling.queue import PRIORITIES
from wattwise.store.records import TraceRecord
from wattwise.store.writer import TraceWriter

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Answer:
    """One metered call's answer, as multi-call policies (cascade, best-of-N) see it."""

    text: str
    cost_usd: float | None = None
    logprob: float | None = None


CallFn = Callable[[str], Awaitable[Answer]]


class MultiCall(Protocol):
    """What a multi-call executor returns: the model whose answer is kept, and why."""

    model: str
    reason: str

    @property
    def answer(self) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class Decision:
    """Which configured model serves a request, by which policy, and why.

    ``execute`` is set by multi-call policies: it makes its calls through the ``call`` it is given
    (each one metered and recorded) and says which answer to keep.
    """

    model: str
    policy: str
    reason: str
    execute: Callable[[CallFn], Awaitable[MultiCall]] | None = None
    reasoning_effort: str | None = None
    router_version: str | None = None  # the trained router that decided (its content hash); None: no router


@dataclass(kw_only=True)
class Outcome:
    """Everything metered about one request; becomes its trace row.

    ``completion`` is the answer kept (for pass-through backends it holds the upstream's body).
    """

    decision: Decision
    usage: Usage | None = None
    cost_usd: float | None = None
    cost_source: str = "unknown"
    energy: EnergyReading = UNKNOWN
    text: str | None = ""
    finish_reason: str = "stop"
    score: float | None = None
    ttft_s: float | None = None
    completion: Completion | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    cache: str | None = None  # the response cache: "hit", "miss", "bypass" (None: no cache configured)
    cached: Hit | None = None  # the entry a hit served, and how it was found


class Meter:
    """Usage → dollars and joules for the configured models (pure pricing and energy math inside)."""

    def __init__(self, *, prices: dict[str, Price | None], profiles: dict[str, EnergyProfile | None]) -> None:
        self.prices = prices
        self.profiles = profiles

    def add(self, outcome: Outcome, *, usage: Usage, recorded_cost: float | None,
            energy: EnergyReading | None, busy_s: float, model: str | None = None) -> None:
        """Add one call's usage, cost and energy to the request's outcome (a cascade adds several)."""
        model = model or outcome.decision.model
        if recorded_cost is not None:
            cost, source = recorded_cost, "recorded"
        elif (price := self.prices.get(model)) is not None:
            cost, source = cost_usd(price, usage), "priced"
        else:
            cost, source = None, "unknown"
        reading = energy or estimate(self.profiles.get(model), usage, busy_s=busy_s)
        if outcome.usage is None:
            outcome.usage = usage
            outcome.cost_usd, outcome.cost_source, outcome.energy = cost, source, reading
            return
        outcome.usage = outcome.usage + usage
        outcome.cost_usd = None if cost is None or outcome.cost_usd is None else outcome.cost_usd + cost
        outcome.cost_source = source if source == outcome.cost_source else "unknown"
        outcome.energy = outcome.energy + reading


class Recorder:
    """In-flight counts, trace rows and metrics: the one place a request's end is written down."""

    def __init__(self, *, writer: TraceWriter, metrics: Metrics, store_content: bool,
                 hash_key: bytes | None = None) -> None:
        self.writer = writer
        self.metrics = metrics
        self.store_content = store_content
        # Keys the prompt hashes; without a configured secret, a random one for this process.
        self.hash_key = hash_key or secrets.token_bytes(32)
        # Requests in flight by priority; the batch runner fills only what interactive leaves.
        self.in_flight: dict[str, int] = {"interactive": 0, "batch": 0}
        # Set when the server begins to shut down: a stream cut then was not the client's doing.
        self.stopping = False
        # Told of each trace row once written down (the flywheel's label plan); must return at once.
        self.on_record: Callable[[Call, TraceRecord], None] | None = None

    def record(self, call: Call, *, status: str, http_status: int, error: str | None) -> None:
        self.in_flight[call.body.wattwise.priority] -= 1
        outcome = call.outcome
        latency = time.perf_counter() - call.t0
        store_content = self.store_content if call.store_content is None else call.store_content
        record = trace_record(call, outcome, store_content=store_content, latency_s=latency,
                              status=status, http_status=http_status, error=error, hash_key=self.hash_key)
        self.writer.submit(record)
        self.metrics.observe(model=record.model or "none", status=status, usage=outcome.usage if outcome else None,
                             cost=record.cost_usd, energy=outcome.energy if outcome else None,
                             latency_s=latency, ttft_s=record.ttft_s)
        if record.cache is not None:
            plan = call.cache_plan
            kind = outcome.cached.kind if outcome and outcome.cached else (plan.mode if plan else "off")
            self.metrics.observe_cache(result=record.cache, kind=kind, saved_usd=record.saved_usd,
                                       saved_j=record.saved_j)
        if record.key_id is not None or record.team is not None:
            self.metrics.observe_key(key=record.key_id, team=record.team, status=status, cost=record.cost_usd,
                                     energy_j=record.energy_j)
        if self.on_record is not None:
            self._tell(call, record)

    def _tell(self, call: Call, record: TraceRecord) -> None:
        assert self.on_record is not None
        try:
            self.on_record(call, record)
        except Exception:  # labelling is a side line: it never fails the request it watches
            log.exception("request %s: the trace row's listener failed", call.request_id)


def _response_text(outcome: Outcome) -> str | None:
    if outcome.text:
        return outcome.text
    tool_calls = (outcome.completion.message_extra.get("tool_calls") if outcome.completion else None)
    return json.dumps({"tool_calls": tool_calls}, ensure_ascii=False) if tool_calls else outcome.text


def hash_key_from_env(name: str) -> bytes | None:
    """The prompt-hash secret from the environment variable ``name`` (None when unset or empty)."""
    value = os.environ.get(name, "") if name else ""
    return value.encode() if value else None


def prompt_hash(prompt: str, key: bytes) -> str:
    """The prompt's keyed hash (HMAC-SHA256, 128 bits in hex): equal prompts match under one key, but
    a stored hash cannot be tested against guessed prompts without the key (a bare SHA-256 could).

    >>> prompt_hash("hi", b"k") == prompt_hash("hi", b"k") != prompt_hash("hi", b"other")
    True
    """
    return hmac.new(key, prompt.encode(errors="replace"), hashlib.sha256).hexdigest()[:32]


def trace_record(call: Call, outcome: Outcome | None, *, store_content: bool, latency_s: float, status: str,
                 http_status: int, error: str | None, hash_key: bytes) -> TraceRecord:
    decision = outcome.decision if outcome else None
    usage = outcome.usage if outcome else None
    principal = call.principal  # set by access control when keys are configured
    return TraceRecord(
        id=call.request_id, ts=call.ts, requested_model=call.body.model, tag=call.tag,
        key_id=getattr(principal, "key_id", None), team=getattr(principal, "team", None),
        model=decision.model if decision else None,
        route_policy=decision.policy if decision else None,
        route_reason=decision.reason if decision else None, stream=call.body.stream,
        messages=json.dumps(call.request.messages, ensure_ascii=False) if store_content else None,
        response=_response_text(outcome) if (outcome and store_content) else None,
        prompt_hash=prompt_hash(call.prompt, hash_key),
        input_tokens=usage.input_tokens if usage else None,
        cached_input_tokens=usage.cached_input_tokens if usage else None,
        output_tokens=usage.output_tokens if usage else None,
        reasoning_tokens=usage.reasoning_tokens if usage else None,
        cost_usd=outcome.cost_usd if outcome else None,
        cost_source=outcome.cost_source if outcome else "unknown",
        energy_j=outcome.energy.joules if outcome else None,
        energy_source=outcome.energy.source if outcome else "unknown",
        ttft_s=outcome.ttft_s if outcome else None, latency_s=latency_s, status=status,
        http_status=http_status, error=error, score=outcome.score if outcome else None,
        calls=json.dumps(call.calls) if call.calls else None,
        router_version=decision.router_version if decision else None,
        cache=outcome.cache if outcome else None,
        cache_source=outcome.cached.entry.request_id if outcome and outcome.cached else None,
        saved_usd=outcome.cached.entry.cost_usd if outcome and outcome.cached else None,
        saved_j=outcome.cached.entry.energy_j if outcome and outcome.cached else None,
    )


Decide = Callable[[ChatBody, str], Decision]


def new_request_id() -> str:
    """A random request id, for work that starts outside an HTTP request (batch lines)."""
    return "req_" + secrets.token_hex(16)


class Call:
    """One request's life: decide, run, meter; it writes its trace row exactly once."""

    def __init__(self, *, body: ChatBody, request: ChatRequest, request_id: str, tag: str | None,
                 decide: Decide, dispatcher: Dispatcher, meter: Meter, recorder: Recorder,
                 cache: ResponseCache | None = None) -> None:
        self.body = body
        self.request = request
        self.request_id = request_id
        self.tag = tag
        self.ts = time.time()
        self.t0 = time.perf_counter()
        self.prompt = request.prompt_text()
        self._decide = decide
        self.dispatcher = dispatcher
        self.meter = meter
        self.recorder = recorder
        self.outcome: Outcome | None = None
        self.parts: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.completions: dict[str, Completion] = {}
        self.closed = False
        self._error: WattwiseError | None = None
        # How a cancellation is recorded: for an HTTP request the client went away; work the gateway
        # started itself (a batch line) says who stopped it instead.
        self.cancelled_as = ("client_disconnected", 499, "client disconnected")
        # Access control (wattwise.access) sets these: who the call is for, the per-key override of
        # [store] store_content, and the callback that settles its budget reservation once it ends.
        self.principal: Any = None
        self.store_content: bool | None = None
        self.on_close: Callable[[Call], None] | None = None
        # The response cache, and the request's Cache-Control header (set by the HTTP layer).
        self.cache = cache
        self.cache_control: str | None = None
        self.cache_plan: Plan | None = None
        self.streamed: StreamAnswer | None = None
        recorder.in_flight[body.wattwise.priority] += 1  # released in close(), once per call

    # -- the life ------------------------------------------------------------------------------

    async def __aenter__(self) -> Call:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        mapped = self.close(exc)
        if exc is not None and mapped is not None and mapped is not exc:
            raise mapped from exc

    def close(self, exc: BaseException | None = None) -> WattwiseError | None:
        """End the call: release it, record it, and return the error the client should see.

        ``None`` when it succeeded or nobody is left to tell (the client went away, the server is
        stopping). Idempotent: a second close returns the first one's answer.
        """
        if self.closed:
            return self._error
        self.closed = True
        status, http_status, error, mapped = _ending(exc, stopping=self.recorder.stopping,
                                                     cancelled_as=self.cancelled_as)
        if mapped is not None and not isinstance(exc, WattwiseError):
            log.error("request %s failed", self.request_id, exc_info=exc)
        if self.outcome is not None and self.parts:
            self.outcome.text = "".join(self.parts)
        self._error = mapped
        if status == "ok":
            try:
                self._remember()
            except Exception:  # the cache is a side line: it never fails the request it keeps
                log.exception("request %s: could not keep its answer in the cache", self.request_id)
        self.recorder.record(self, status=status, http_status=http_status, error=error)
        if self.on_close is not None:
            self.on_close(self)
        return mapped

    @property
    def priority(self) -> int:
        return PRIORITIES[self.body.wattwise.priority]

    async def first(self, items: AsyncIterator[T]) -> T | None:
        """A stream's first item (None when it is empty), taken before any byte is sent: a failure
        here ends the call and is raised as the error the client should see (a plain status)."""
        try:
            return await items.__anext__()
        except StopAsyncIteration:
            return None
        except BaseException as exc:
            error = self.close(exc)
            if error is None or error is exc:
                raise
            raise error from exc

    # -- routing and calls ---------------------------------------------------------------------

    def decide(self) -> Decision:
        decision = self._decide(self.body, self.prompt)
        self.outcome = Outcome(decision=decision, cache=self.cache_plan.status if self.cache_plan else None)
        if decision.reasoning_effort and "reasoning_effort" not in self.request.extra:
            self.request = self.request.with_fields(reasoning_effort=decision.reasoning_effort)
        return decision

    async def _one(self, model: str) -> Answer:
        """One call of a multi-call policy: metered into the outcome and listed in ``calls``."""
        assert self.outcome is not None
        started = time.perf_counter()
        done = await self.dispatcher.complete(model, self.request, priority=self.priority, fallback=False)
        before = self.outcome.cost_usd if self.outcome.usage is not None else 0.0
        self.meter.add(self.outcome, usage=done.usage, recorded_cost=done.cost_usd, energy=done.energy,
                       busy_s=time.perf_counter() - started, model=model)
        after = self.outcome.cost_usd
        cost = None if before is None or after is None else after - before
        self.calls.append({"model": model, "input_tokens": done.usage.input_tokens,
                           "output_tokens": done.usage.output_tokens, "cost_usd": cost})
        self.completions[model] = done
        mean_logprob = done.logprob / done.usage.output_tokens if (
            done.logprob is not None and done.usage.output_tokens) else None
        return Answer(text=done.text or "", cost_usd=cost, logprob=mean_logprob)

    async def _multi(self, execute: Callable[[CallFn], Awaitable[MultiCall]]) -> Outcome:
        assert self.outcome is not None
        result = await execute(self._one)
        kept = self.completions[result.model]
        self.outcome.decision = replace(self.outcome.decision, model=result.model, reason=result.reason)
        self._keep(kept)
        return self.outcome

    def _keep(self, done: Completion) -> None:
        assert self.outcome is not None
        self.outcome.completion = done
        self.outcome.text = done.text
        self.outcome.finish_reason = done.finish_reason
        self.outcome.score = done.score
        self.outcome.extra = done.message_extra

    def _dispatched(self, trail: Trail) -> None:
        """Name a fallback (and the failures that led to it) in the decision, hence the trace row."""
        assert self.outcome is not None
        decision = self.outcome.decision
        if trail.fell_back(decision.model):
            assert trail.model is not None
            why = "; ".join(trail.notes)
            self.outcome.decision = replace(decision, model=trail.model,
                                            reason=f"{decision.reason}; fallback {decision.model}→{trail.model} "
                                                   f"after {why}")

    # -- the response cache --------------------------------------------------------------------

    async def _from_cache(self) -> bool:
        """Serve the answer from the cache if it holds one; plans the cache for the call either way."""
        if self.cache is None:
            if self.body.wattwise.cache in ("exact", "semantic"):
                raise InvalidRequest("the response cache is off on this gateway ([cache] enabled = false)",
                                     param="wattwise.cache", code="unsupported_value")
            return False
        self.cache_plan = plan = self.cache.plan(self.body, principal=self.principal, cache_control=self.cache_control)
        hit = await self.cache.lookup(plan)
        if hit is None:
            return False
        entry = hit.entry
        self.outcome = Outcome(decision=Decision(model=entry.model, policy="cache", reason=hit.reason),
                               usage=Usage(), cost_usd=0.0, cost_source="cache_hit", energy=hit.energy,
                               cache="hit", cached=hit, ttft_s=time.perf_counter() - self.t0)
        self._keep(cached_completion(entry.body, request_id=self.request_id, created=int(self.ts)))
        return True

    def _remember(self) -> None:
        plan, outcome = self.cache_plan, self.outcome
        if self.cache is None or plan is None or not plan.save or outcome is None or outcome.cached is not None:
            return
        if outcome.completion is not None:
            body = answer_body(outcome.completion, usage=outcome.usage)
        elif self.streamed is not None and self.streamed.ok:
            body = self.streamed.body(finish_reason=outcome.finish_reason,
                                      usage=outcome.usage.to_openai() if outcome.usage else None)
        else:
            return
        self.cache.remember(plan, body=body, model=outcome.decision.model, request_id=self.request_id,
                            tag=self.tag, principal=self.principal, cost_usd=outcome.cost_usd,
                            energy_j=outcome.energy.joules)

    async def complete(self) -> Outcome:
        if await self._from_cache():
            assert self.outcome is not None
            return self.outcome
        decision = self.decide()
        assert self.outcome is not None
        if decision.execute is not None:
            return await self._multi(decision.execute)
        started = time.perf_counter()
        trail = Trail()
        done = await self.dispatcher.complete(decision.model, self.request, priority=self.priority, trail=trail)
        self._dispatched(trail)
        self.meter.add(self.outcome, usage=done.usage, recorded_cost=done.cost_usd,
                       energy=done.energy, busy_s=time.perf_counter() - started)
        self._keep(done)
        return self.outcome

    async def stream(self) -> AsyncIterator[StreamEvent]:
        """Backend events as they come; once they end, the answer is metered into ``outcome``."""
        if await self._from_cache():
            assert self.outcome is not None
            for event in replayed(self.outcome.completion):
                yield event
            return
        decision = self.decide()
        outcome = self.outcome
        assert outcome is not None
        if self.cache_plan is not None and self.cache_plan.save:
            self.streamed = StreamAnswer()
        if decision.execute is not None:
            # A cascade cannot stream before its check: run it, then send the kept answer.
            await self._multi(decision.execute)
            outcome.ttft_s = time.perf_counter() - self.t0
            for event in replayed(outcome.completion):
                if event.delta:
                    self.parts.append(event.delta)
                yield event
            return
        started = time.perf_counter()
        trail, noted, seen = Trail(), False, _Seen()
        events = self.dispatcher.stream(decision.model, self.request, priority=self.priority, trail=trail)
        try:
            async for event in events:
                if not noted:
                    noted = True
                    self._dispatched(trail)
                if outcome.ttft_s is None and (event.delta or event.delta_extra):
                    outcome.ttft_s = time.perf_counter() - self.t0
                if event.delta:
                    self.parts.append(event.delta)
                if self.streamed is not None:
                    _assemble(self.streamed, event)
                seen.take(event)
                yield event
        finally:
            # Closing here (not at garbage collection) frees the replica's slot when the client leaves.
            await events.aclose()
        self.meter.add(outcome, usage=seen.usage or Usage(), recorded_cost=seen.cost_usd, energy=seen.energy,
                       busy_s=time.perf_counter() - started)
        outcome.finish_reason = seen.finish_reason or "stop"
        outcome.score = seen.score


@dataclass
class _Seen:
    """The metering facts a stream's events carried, whichever event carried them."""

    usage: Usage | None = None
    cost_usd: float | None = None
    energy: EnergyReading | None = None
    score: float | None = None
    finish_reason: str | None = None

    def take(self, event: StreamEvent) -> None:
        for name in ("usage", "cost_usd", "energy", "score", "finish_reason"):
            value = getattr(event, name)
            if value is not None:
                setattr(self, name, value)


def replayed(done: Completion | None) -> list[StreamEvent]:
    """A finished answer as stream events (a cascade's kept answer, sent after its check; a cache hit).

    Tool calls get the ``index`` a streamed tool-call delta carries (clients merge deltas by it).
    """
    if done is None:
        return [StreamEvent(finish_reason="stop")]
    extra = {k: v for k, v in done.message_extra.items() if k != "role"}
    if isinstance(extra.get("tool_calls"), list):
        extra["tool_calls"] = [{"index": i, **call} if isinstance(call, dict) else call
                               for i, call in enumerate(extra["tool_calls"])]
    return [StreamEvent(delta=done.text or "", delta_extra=extra or None, logprobs=done.logprobs),
            StreamEvent(finish_reason=done.finish_reason)]


def _assemble(answer: StreamAnswer, event: StreamEvent) -> None:
    """Feed one stream event to the answer being rebuilt for the cache."""
    if event.raw is not None:
        choices = event.raw.get("choices") or []
        first = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
        delta = first.get("delta") if first else None
        answer.add(delta if isinstance(delta, dict) else {}, event.logprobs, event.raw)
        if any(isinstance(c, dict) and c.get("index", 0) != 0 for c in choices):
            answer.ok = False
        return
    answer.add({"content": event.delta, **(event.delta_extra or {})}, event.logprobs)


def answer_body(done: Completion, *, usage: Usage | None) -> dict[str, Any]:
    """A finished answer as a ``chat.completion`` body without its per-request fields (what the cache
    keeps): a pass-through backend's own body, else one built like the API renders it."""
    if done.raw is not None:
        return {k: v for k, v in done.raw.items() if k not in ("id", "created", "wattwise")}
    message: dict[str, Any] = {"role": "assistant", "content": done.text, **done.message_extra}
    return {"object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": done.finish_reason,
                         "logprobs": done.logprobs}],
            "usage": usage.to_openai() if usage else None}


def cached_completion(body: dict[str, Any], *, request_id: str, created: int) -> Completion:
    """A cached answer as the :class:`Completion` this request serves (its own id and time)."""
    choice = (body.get("choices") or [{}])[0]
    message = dict(choice.get("message") or {})
    content = message.pop("content", None)
    message.pop("role", None)
    raw = {**body, "id": "chatcmpl-" + request_id.removeprefix("req_"), "created": created}
    return Completion(text=content if isinstance(content, str) else None,
                      finish_reason=choice.get("finish_reason") or "stop", message_extra=message,
                      logprobs=choice.get("logprobs"), raw=raw)


def _ending(exc: BaseException | None, *, stopping: bool, cancelled_as: tuple[str, int, str]
            ) -> tuple[str, int, str | None, WattwiseError | None]:
    """``(status, http_status, error, mapped)`` for the way a call ended."""
    if exc is None:
        return "ok", 200, None, None
    if isinstance(exc, asyncio.CancelledError | GeneratorExit | ClientGone):
        if stopping:
            return "shutdown", 503, "the server shut down mid-request", None
        return *cancelled_as, None
    if isinstance(exc, WattwiseError):
        return "error", exc.status, exc.message, exc
    mapped = InternalError(f"internal error ({type(exc).__name__}); the request id names it in the logs")
    return "error", mapped.status, f"{type(exc).__name__}: {exc}", mapped


class ClientGone(Exception):
    """The client went away before the answer was complete (passed to :meth:`Call.close`)."""
