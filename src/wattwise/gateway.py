"""The gateway's core, apart from HTTP: decide, call, meter, record.

Data flows one way: a validated body → a routing decision → the backend call → metering
(usage → $, J) → one trace row. The HTTP layer in :mod:`wattwise.api` only translates.

Usage::

    gateway = Gateway(config=cfg, backends={"m": MockBackend(name="m")}, store=open_store("sqlite://"))
    await gateway.start()
    async with gateway.call(body, request_id="req_1", tag=None) as call:
        outcome = await call.complete()
    await gateway.stop()
"""

from __future__ import annotations

import time
from typing import Protocol

from wattwise.backends.base import Backend, ChatRequest
from wattwise.cache import build_cache
from wattwise.call import Answer, Call, CallFn, Decision, Meter, MultiCall, Outcome, Recorder, hash_key_from_env
from wattwise.config import Config, ModelConfig
from wattwise.exceptions import ModelNotFound
from wattwise.metering.energy import EnergyProfile
from wattwise.metering.pricing import Price
from wattwise.metrics import Metrics
from wattwise.request import ChatBody
from wattwise.scheduling.dispatch import Dispatcher
from wattwise.scheduling.health import HealthChecker
from wattwise.store.sql import TraceStore
from wattwise.store.writer import TraceWriter

__all__ = ["Answer", "Call", "CallFn", "Decision", "Gateway", "MultiCall", "Outcome", "RoutePicker"]


class RoutePicker(Protocol):
    """What the gateway needs of a router: pick one model for ``auto`` / ``auto:<policy>``."""

    def pick(self, *, prompt: str, policy: str, body: ChatBody, gateway: Gateway) -> Decision: ...


class Service(Protocol):
    """Background work started and stopped with the gateway (the flywheel's label runner)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class CheapestRule:
    """Until a trained router is configured: the model with the lowest list price, named honestly."""

    def pick(self, *, prompt: str, policy: str, body: ChatBody, gateway: Gateway) -> Decision:
        def price_key(name: str) -> float:
            price = gateway.prices.get(name)
            return float("inf") if price is None else price.input + price.output

        model = min(gateway.backends, key=price_key)
        return Decision(model=model, policy="rule:cheapest", reason=f"rule: cheapest list price ({model})")


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
        self.meter = Meter(prices={name: price_of(spec) for name, spec in config.models.items() if name in backends},
                           profiles={name: profile_of(spec) for name, spec in config.models.items()
                                     if name in backends})
        self.writer = TraceWriter(store=store, batch_size=config.store.batch_size,
                                  flush_interval_s=config.store.flush_interval_s,
                                  journal_dir=config.store.journal_dir, journal_fsync=config.store.journal_fsync)
        self.recorder = Recorder(writer=self.writer, metrics=self.metrics, store_content=config.store.store_content,
                                 hash_key=hash_key_from_env(config.store.hash_key_env)
                                 or hash_key_from_env(config.auth.master_key_env))
        self.cache = build_cache(config, backends=backends)
        self.started_at = time.time()
        self.health: HealthChecker | None = None
        # Work the gateway runs beside requests (the flywheel), started after the trace writer and
        # stopped before it closes, so their own calls are recorded.
        self.services: list[Service] = []

    @property
    def prices(self) -> dict[str, Price | None]:
        return self.meter.prices

    @property
    def in_flight(self) -> dict[str, int]:
        """Requests in flight by priority (the batch runner fills what interactive leaves)."""
        return self.recorder.in_flight

    def begin_shutdown(self) -> None:
        """The server is stopping: streams cut from now on are recorded as ``shutdown``."""
        self.recorder.stopping = True

    async def start(self) -> None:
        self.writer.start()
        for service in self.services:
            await service.start()
        intervals = [spec.health_interval_s for spec in self.config.models.values() if spec.health_interval_s > 0]
        if intervals:
            self.health = HealthChecker(scheduler=self.dispatcher.scheduler, interval_s=min(intervals))
            self.health.start()

    async def stop(self) -> None:
        """Flush every trace row, then release backends and the store."""
        self.begin_shutdown()
        if self.health is not None:
            await self.health.stop()
        for service in reversed(self.services):
            await service.stop()
        if self.cache is not None:
            await self.cache.aclose()
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
                           extra=body.passthrough() | ({"n": body.n} if body.n != 1 else {}), sent=body.sent())

    # -- calls ---------------------------------------------------------------------------------

    def call(self, body: ChatBody, *, request_id: str, tag: str | None, request: ChatRequest | None = None) -> Call:
        """Open one request's :class:`~wattwise.call.Call` (an async context manager)."""
        return Call(body=body, request=request or self.backend_request(body), request_id=request_id, tag=tag,
                    decide=self.decide, dispatcher=self.dispatcher, meter=self.meter, recorder=self.recorder,
                    cache=self.cache)
