"""Prometheus metrics, one registry per gateway (no process-wide globals).

Usage::

    metrics = Metrics()
    metrics.observe(model="small", status="ok", usage=usage, cost=0.001, energy=reading, latency_s=0.2)
    text = metrics.render()
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from wattwise.metering.energy import EnergyReading
from wattwise.metering.usage import Usage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("wattwise_requests", "Requests by model and status",
                                ["model", "status"], registry=r)
        self.tokens = Counter("wattwise_tokens", "Tokens by model and kind", ["model", "kind"], registry=r)
        self.cost = Counter("wattwise_cost_usd", "Dollars spent by model", ["model"], registry=r)
        self.energy = Counter("wattwise_energy_joules", "Joules by model and source",
                              ["model", "source"], registry=r)
        self.latency = Histogram("wattwise_request_latency_seconds", "End-to-end latency",
                                 ["model"], registry=r)
        self.ttft = Histogram("wattwise_time_to_first_token_seconds", "Time to first token (streams)",
                              ["model"], registry=r)
        self.in_flight = Gauge("wattwise_in_flight_requests", "Requests being served", registry=r)
        self.trace_backlog = Gauge("wattwise_trace_backlog", "Trace rows accepted but not yet written",
                                   registry=r)

    def observe(self, *, model: str, status: str, usage: Usage | None, cost: float | None,
                energy: EnergyReading | None, latency_s: float, ttft_s: float | None = None) -> None:
        self.requests.labels(model, status).inc()
        self.latency.labels(model).observe(latency_s)
        if ttft_s is not None:
            self.ttft.labels(model).observe(ttft_s)
        if usage is not None:
            self.tokens.labels(model, "input").inc(usage.input_tokens)
            self.tokens.labels(model, "cached_input").inc(usage.cached_input_tokens)
            self.tokens.labels(model, "output").inc(usage.output_tokens)
            self.tokens.labels(model, "reasoning").inc(usage.reasoning_tokens)
        if cost is not None:
            self.cost.labels(model).inc(cost)
        if energy is not None and energy.joules is not None:
            self.energy.labels(model, energy.source).inc(energy.joules)

    def render(self) -> bytes:
        return generate_latest(self.registry)
