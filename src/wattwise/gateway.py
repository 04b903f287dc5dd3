"""The gateway's core, apart from HTTP: decide, call, meter, record.

Data flows one way: a validated body → a routing decision → the backend call → metering
(usage → $, J) → one trace row. The HTTP layer in :mod:`wattwise.api` only translates.

Usage::

    gateway = Gateway(config=cfg, backends={"m": MockBackend(name="m")}, store=open_store("sqlite://"))
    await gateway.start()
    result = await gateway.complete(body, request_id="req_1")
    await gateway.stop()
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from wattwise.request import ChatBody
from wattwise.backends.base import Backend, ChatRequest, Completion, StreamEvent
from wattwise.config import Config, ModelConfig
from wattwise.exceptions import ModelNotFound, WattwiseError
from wattwise.metering.energy import UNKNOWN, EnergyProfile, EnergyReading, estimate
from wattwise.metering.pricing import Price, cost_usd
from wattwise.metering.usage import Usage
from wattwise.metrics import Metrics
from wattwise.scheduling.dispatch import Dispatcher, Trail
from wattwise.scheduling.health import HealthChecker
from wattwise.scheduling.queue import PRIORITIES
from wattwise.store.records import TraceRecord
from wattwise.store.sql import TraceStore
from wattwise.store.writer import TraceWriter


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


class RoutePicker(Protocol):
    """What the gateway needs of a router: pick one model for ``auto`` / ``auto:<policy>``."""

    def pick(self, *, prompt: str, policy: str, body: ChatBody, gateway: Gateway) -> Decision: ...


class CheapestRule:
    """Until a trained router is configured: the model with the lowest list price, named honestly."""

    def pick(self, *, prompt: str, policy: str, body: ChatBody, gateway: Gateway) -> Decision:
        def price_key(name: str) -> float:
            price = gateway.prices.get(name)
            return float("inf") if price is None else price.input + price.output

        model = min(gateway.backends, key=price_key)
        return Decision(model=model, policy="rule:cheapest", reason=f"rule: cheapest list price ({model})")


@dataclass(kw_only=True)
class Outcome:
    """Everything metered about one request; becomes its trace row."""

    decision: Decision
    usage: Usage | None = None
    cost_usd: float | None = None
    cost_source: str = "unknown"
    energy: EnergyReading = UNKNOWN
    text: str = ""
    finish_reason: str = "stop"
    score: float | None = None
    ttft_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def price_of(spec: ModelConfig) -> Price | None:
    if spec.price is None:
        return None
    p = spec.price
    return Price(input=p.input, output=p.output, cached_input=p.cached_input, reasoning=p.reasoning)


def profile_of(spec: ModelConfig) -> EnergyProfile | None:
    if spec.energy is None:
        return None
    e = spec.energy
    return EnergyProfile(joules_per_input_token=e.joules_per_input_token,
                         joules_per_output_token=e.joules_per_output_token, watts=e.watts)


class Gateway:
    """Routes, calls, meters and records chat requests over the configured backends."""

    def __init__(self, *, config: Config, backends: dict[str, Backend], store: TraceStore,
                 router: RoutePicker | None = None, metrics: Metrics | None = None,
                 dispatcher: Dispatcher | None = None) -> None:
        self.config = config
        self.backends = backends
        self.store = store
        self.router: RoutePicker = router or CheapestRule()
        self.metrics = metrics or Metrics()
        self.dispatcher = dispatcher or Dispatcher.from_backends(backends)
        self.prices = {name: price_of(spec) for name, spec in config.models.items() if name in backends}
        self.profiles = {name: profile_of(spec) for name, spec in config.models.items() if name in backends}
        self.writer = TraceWriter(store=store, batch_size=config.store.batch_size,
                                  flush_interval_s=config.store.flush_interval_s)
        self.started_at = time.time()
        self.health: HealthChecker | None = None
        # Requests in flight by priority; the batch runner fills only what interactive leaves.
        self.in_flight: dict[str, int] = {"interactive": 0, "batch": 0}

    async def start(self) -> None:
        self.writer.start()
        intervals = [spec.health_interval_s for spec in self.config.models.values() if spec.health_interval_s > 0]
        if intervals:
            self.health = HealthChecker(scheduler=self.dispatcher.scheduler, interval_s=min(intervals))
            self.health.start()

    async def stop(self) -> None:
        """Flush every trace row, then release backends and the store."""
        if self.health is not None:
            await self.health.stop()
        self.writer.close()
        closing = {id(b): b for b in [*self.backends.values(), *self.dispatcher.backends()]}
        for backend in closing.values():
            await backend.aclose()
        self.store.close()

    # -- routing -------------------------------------------------------------------------------

    def decide(self, body: ChatBody, prompt: str) -> Decision:
        name = body.model
        if name in self.backends:
            return Decision(model=name, policy="direct", reason="requested")
        if name == "auto" or name.startswith("auto:"):
            policy = name.partition(":")[2] or self.config.router.default_policy
            return self.router.pick(prompt=prompt, policy=policy, body=body, gateway=self)
        raise ModelNotFound(f"The model '{name}' does not exist; see GET /v1/models", param="model")

    def backend_request(self, body: ChatBody) -> ChatRequest:
        return ChatRequest(messages=[m.model_dump(exclude_none=True) for m in body.messages],
                           max_tokens=body.output_limit(), temperature=body.temperature, top_p=body.top_p,
                           stop=body.stop_list(), seed=body.seed, logprobs=body.logprobs,
                           extra=body.passthrough())

    # -- metering ------------------------------------------------------------------------------

    def meter(self, outcome: Outcome, *, usage: Usage, recorded_cost: float | None,
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
        first = outcome.usage is None
        outcome.usage = usage if first else outcome.usage + usage  # type: ignore[operator]
        if first:
            outcome.cost_usd, outcome.cost_source, outcome.energy = cost, source, reading
            return
        outcome.cost_usd = None if cost is None or outcome.cost_usd is None else outcome.cost_usd + cost
        outcome.cost_source = source if source == outcome.cost_source else "unknown"
        outcome.energy = outcome.energy + reading

    # -- calls ---------------------------------------------------------------------------------

    def begin(self, body: ChatBody, *, request_id: str, tag: str | None) -> Call:
        call = Call(gateway=self, body=body, request_id=request_id, tag=tag)
        self.in_flight[body.wattwise.priority] += 1  # released in record(), once per call
        return call

    def record(self, call: Call, outcome: Outcome | None, *, status: str, http_status: int,
               error: str | None) -> None:
        self.in_flight[call.body.wattwise.priority] -= 1
        latency = time.perf_counter() - call.t0
        decision = outcome.decision if outcome else None
        usage = outcome.usage if outcome else None
        store_content = self.config.store.store_content
        record = TraceRecord(
            id=call.request_id, ts=call.ts, requested_model=call.body.model, tag=call.tag,
            model=decision.model if decision else None,
            route_policy=decision.policy if decision else None,
            route_reason=decision.reason if decision else None, stream=call.body.stream,
            messages=json.dumps(call.request.messages, ensure_ascii=False) if store_content else None,
            response=outcome.text if (outcome and store_content) else None,
            prompt_hash=hashlib.sha256(call.prompt.encode()).hexdigest()[:32],
            input_tokens=usage.input_tokens if usage else None,
            cached_input_tokens=usage.cached_input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            reasoning_tokens=usage.reasoning_tokens if usage else None,
            cost_usd=outcome.cost_usd if outcome else None,
            cost_source=outcome.cost_source if outcome else "unknown",
            energy_j=outcome.energy.joules if outcome else None,
            energy_source=outcome.energy.source if outcome else "unknown",
            ttft_s=outcome.ttft_s if outcome else None, latency_s=latency, status=status,
            http_status=http_status, error=error, score=outcome.score if outcome else None,
            calls=json.dumps(call.calls) if call.calls else None,
        )
        self.writer.submit(record)
        self.metrics.observe(model=record.model or "none", status=status, usage=usage,
                             cost=record.cost_usd, energy=outcome.energy if outcome else None,
                             latency_s=latency, ttft_s=record.ttft_s)


class Call:
    """One request's life: decide, run, meter; it writes its trace row exactly once."""

    def __init__(self, *, gateway: Gateway, body: ChatBody, request_id: str, tag: str | None) -> None:
        self.gateway = gateway
        self.body = body
        self.request_id = request_id
        self.tag = tag
        self.ts = time.time()
        self.t0 = time.perf_counter()
        self.request = gateway.backend_request(body)
        self.prompt = self.request.prompt_text()
        self.outcome: Outcome | None = None
        self.parts: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.completions: dict[str, Completion] = {}
        self._recorded = False

    def decide(self) -> Decision:
        decision = self.gateway.decide(self.body, self.prompt)
        self.outcome = Outcome(decision=decision)
        if decision.reasoning_effort and "reasoning_effort" not in self.request.extra:
            self.request = replace(self.request, extra={**self.request.extra,
                                                        "reasoning_effort": decision.reasoning_effort})
        return decision

    async def _one(self, model: str) -> Answer:
        """One call of a multi-call policy: metered into the outcome and listed in ``calls``."""
        assert self.outcome is not None
        started = time.perf_counter()
        done = await self.gateway.dispatcher.complete(model, self.request, priority=self.priority,
                                                      fallback=False)
        before = self.outcome.cost_usd if self.outcome.usage is not None else 0.0
        self.gateway.meter(self.outcome, usage=done.usage, recorded_cost=done.cost_usd, energy=done.energy,
                           busy_s=time.perf_counter() - started, model=model)
        after = self.outcome.cost_usd
        cost = None if before is None or after is None else after - before
        self.calls.append({"model": model, "input_tokens": done.usage.input_tokens,
                           "output_tokens": done.usage.output_tokens, "cost_usd": cost})
        self.completions[model] = done
        mean_logprob = done.logprob / done.usage.output_tokens if (
            done.logprob is not None and done.usage.output_tokens) else None
        return Answer(text=done.text, cost_usd=cost, logprob=mean_logprob)

    async def _multi(self, execute: Callable[[CallFn], Awaitable[MultiCall]]) -> Outcome:
        assert self.outcome is not None
        result = await execute(self._one)
        kept = self.completions[result.model]
        self.outcome.decision = replace(self.outcome.decision, model=result.model, reason=result.reason)
        self.outcome.text = result.answer.text
        self.outcome.finish_reason = kept.finish_reason
        self.outcome.score = kept.score
        return self.outcome

    def finish(self, *, status: str = "ok", http_status: int = 200, error: str | None = None) -> None:
        if not self._recorded:
            self._recorded = True
            if self.outcome is not None and self.parts:
                self.outcome.text = "".join(self.parts)
            self.gateway.record(self, self.outcome, status=status, http_status=http_status, error=error)

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, WattwiseError):
            self.finish(status="error", http_status=exc.status, error=exc.message)
        else:
            self.finish(status="error", http_status=500, error=f"{type(exc).__name__}: {exc}")

    @property
    def priority(self) -> int:
        return PRIORITIES[self.body.wattwise.priority]

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

    async def complete(self) -> Outcome:
        decision = self.decide()
        assert self.outcome is not None
        if decision.execute is not None:
            return await self._multi(decision.execute)
        started = time.perf_counter()
        trail = Trail()
        done: Completion = await self.gateway.dispatcher.complete(decision.model, self.request,
                                                                  priority=self.priority, trail=trail)
        self._dispatched(trail)
        self.gateway.meter(self.outcome, usage=done.usage, recorded_cost=done.cost_usd,
                           energy=done.energy, busy_s=time.perf_counter() - started)
        self.outcome.text = done.text
        self.outcome.finish_reason = done.finish_reason
        self.outcome.score = done.score
        self.outcome.extra = done.message_extra
        return self.outcome

    async def stream(self) -> AsyncIterator[StreamEvent]:
        """Backend events; the final event is metered into ``self.outcome`` before it is yielded."""
        decision = self.decide()
        outcome = self.outcome
        assert outcome is not None
        if decision.execute is not None:
            # A cascade cannot stream before its check: run it, then send the kept answer.
            await self._multi(decision.execute)
            outcome.ttft_s = time.perf_counter() - self.t0
            self.parts.append(outcome.text)
            yield StreamEvent(delta=outcome.text)
            yield StreamEvent(finish_reason=outcome.finish_reason)
            return
        started = time.perf_counter()
        trail, noted = Trail(), False
        events = self.gateway.dispatcher.stream(decision.model, self.request, priority=self.priority, trail=trail)
        try:
            async for event in events:
                if not noted:
                    noted = True
                    self._dispatched(trail)
                if event.delta:
                    if outcome.ttft_s is None:
                        outcome.ttft_s = time.perf_counter() - self.t0
                    self.parts.append(event.delta)
                if event.finish_reason is not None:
                    self.gateway.meter(outcome, usage=event.usage or Usage(), recorded_cost=event.cost_usd,
                                       energy=event.energy, busy_s=time.perf_counter() - started)
                    outcome.finish_reason = event.finish_reason
                    outcome.score = event.score
                yield event
        finally:
            # Closing here (not at garbage collection) frees the replica's slot when the client leaves.
            await events.aclose()
