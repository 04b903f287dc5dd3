"""Assemble a gateway from a config: backends by name, the trace store, the router, the flywheel.

Usage::

    gateway = build_gateway(load_config("wattwise.toml"), config_dir=".")
    app = create_app(gateway)
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from wattwise.backends.base import Backend
from wattwise.backends.registry import BuildContext, build_backend
from wattwise.config import Config, ModelConfig
from wattwise.gateway import Gateway, RoutePicker
from wattwise.scheduling.dispatch import Dispatcher
from wattwise.scheduling.scheduler import ModelPolicy
from wattwise.store.sql import open_store


def build_backends(config: Config, *, config_dir: str | Path = ".") -> dict[str, Backend]:
    context = BuildContext(config_dir=str(config_dir))
    return {name: build_backend(name, _first_replica(spec), context) for name, spec in config.models.items()}


def build_dispatcher(config: Config, backends: dict[str, Backend], *,
                     config_dir: str | Path = ".") -> Dispatcher:
    """Replica pools (each ``replicas`` entry its own backend; else the model's one backend) and policies."""
    context = BuildContext(config_dir=str(config_dir))
    replicas: dict[str, list[tuple[Backend, float]]] = {}
    for name, spec in config.models.items():
        if not spec.replicas:
            replicas[name] = [(backends[name], 1.0)]
            continue
        members = []
        for i, rep in enumerate(spec.replicas):
            update = {k: v for k, v in (("base_url", rep.base_url), ("api_key_env", rep.api_key_env)) if v}
            backend = backends[name] if i == 0 else build_backend(name, spec.model_copy(update=update), context)
            members.append((backend, rep.weight))
        replicas[name] = members
    policies = {name: ModelPolicy(max_concurrency=spec.max_concurrency, retries=spec.retries,
                                  backoff_s=spec.retry_backoff_s, retry_after_cap_s=spec.retry_after_cap_s,
                                  fallback=tuple(spec.fallback))
                for name, spec in config.models.items()}
    breakers = {name: (spec.breaker_failures, spec.breaker_cooldown_s) for name, spec in config.models.items()}
    return Dispatcher.from_replicas(replicas, policies=policies, breakers=breakers)


def _first_replica(spec: ModelConfig) -> ModelConfig:
    if not spec.replicas:
        return spec
    first = spec.replicas[0]
    update = {k: v for k, v in (("base_url", first.base_url), ("api_key_env", first.api_key_env)) if v}
    return spec.model_copy(update=update)


def build_gateway(config: Config, *, config_dir: str | Path = ".",
                  router: RoutePicker | None = None) -> Gateway:
    backends = build_backends(config, config_dir=config_dir)
    store = open_store(config.store.url)
    if router is None:
        from wattwise.routing.adapter import load_picker

        router = load_picker(config, config_dir=str(config_dir))
    dispatcher = build_dispatcher(config, backends, config_dir=config_dir)
    gateway = Gateway(config=config, backends=backends, store=store, router=router, dispatcher=dispatcher)
    if config.flywheel.enabled:
        from wattwise.labeller import Flywheel, shipped_outcomes

        Flywheel.attach(gateway, shipped=partial(shipped_outcomes, config.flywheel.shipped, base_dir=str(config_dir)))
    return gateway
