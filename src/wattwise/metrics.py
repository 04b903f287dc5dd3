"""Prometheus metrics, one registry per gateway (no process-wide globals).

Usage::

    metrics = Metrics()
    metrics.observe(model="small", status="ok", usage=usage, cost=0.001, energy=reading, latency_s=0.2)
    metrics.observe_key(key="key_1", team="search", status="ok", cost=0.001, energy_j=0.5)
    text = metrics.render()

Per-key series are bounded: the first ``max_key_series`` keys seen get their own ``key`` label and
every later key is counted under ``key="other"`` (teams likewise, under ``max_team_series``). First
come rather than top-N by spend, because a series that moved between its own label and ``other``
would make both counters go down, which Prometheus reads as a reset; keys are made by an admin, so
the default (100) normally covers them all, and ``wattwise report --by key`` has every key.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from wattwise.metering.energy import EnergyReading
from wattwise.metering.usage import Usage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


MAX_KEY_SERIES = 100
MAX_TEAM_SERIES = 100


class Metrics:
    def __init__(self, *, max_key_series: int = MAX_KEY_SERIES, max_team_series: int = MAX_TEAM_SERIES) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.keys = _Bounded(max_key_series)
        self.teams = _Bounded(max_team_series)
        self.key_requests = Counter("wattwise_key_requests", "Requests by API key, team and status",
                                    ["key", "team", "status"], registry=r)
        self.key_cost = Counter("wattwise_key_cost_usd", "Dollars spent by API key and team", ["key", "team"],
                                registry=r)
        self.key_energy = Counter("wattwise_key_energy_joules", "Joules (known energy) by API key and team",
                                  ["key", "team"], registry=r)
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
        self.cache = Counter("wattwise_cache_requests", "Chat requests by response-cache result and kind",
                             ["result", "kind"], registry=r)
        self.cache_saved_usd = Counter("wattwise_cache_saved_usd", "Dollars the served cache hits had cost",
                                       registry=r)
        self.cache_saved_energy = Counter("wattwise_cache_saved_joules", "Joules the served cache hits had cost",
                                          registry=r)
        self.flywheel = Gauge("wattwise_flywheel", "The flywheel on this replica: label jobs pending, running "
                              "and dropped, labels stored, retrains and promotions, labelling spend today",
                              ["stat"], registry=r)
        self.router_version = Gauge("wattwise_router_version_info", "The router serving auto (1 for its version)",
                                    ["version"], registry=r)
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

    def observe_cache(self, *, result: str, kind: str, saved_usd: float | None, saved_j: float | None) -> None:
        self.cache.labels(result, kind).inc()
        if saved_usd is not None:
            self.cache_saved_usd.inc(saved_usd)
        if saved_j is not None:
            self.cache_saved_energy.inc(saved_j)

    def observe_key(self, *, key: str | None, team: str | None, status: str, cost: float | None,
                    energy_j: float | None) -> None:
        """Count one request against its API key and team (labels bounded: see the module's docstring)."""
        labels = (self.keys.label(key), self.teams.label(team))
        self.key_requests.labels(*labels, status).inc()
        if cost is not None:
            self.key_cost.labels(*labels).inc(cost)
        if energy_j is not None:
            self.key_energy.labels(*labels).inc(energy_j)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Bounded:
    """Label values for the first ``limit`` names seen; ``other`` for the rest, ``none`` for no name."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def label(self, name: str | None) -> str:
        if name is None:
            return "none"
        if name in self.seen:
            return name
        if len(self.seen) < self.limit:
            self.seen.add(name)
            return name
        return "other"
