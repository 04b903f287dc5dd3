"""Assemble a gateway from a config: backends by name, the trace store, the router.

Usage::

    gateway = build_gateway(load_config("wattwise.toml"), config_dir=".")
    app = create_app(gateway)
"""

from __future__ import annotations

from pathlib import Path

from wattwise.backends.base import Backend
from wattwise.backends.registry import BuildContext, build_backend
from wattwise.config import Config
from wattwise.gateway import Gateway, RoutePicker
from wattwise.store.sql import open_store


def build_backends(config: Config, *, config_dir: str | Path = ".") -> dict[str, Backend]:
    context = BuildContext(config_dir=str(config_dir))
    return {name: build_backend(name, spec, context) for name, spec in config.models.items()}


def build_gateway(config: Config, *, config_dir: str | Path = ".",
                  router: RoutePicker | None = None) -> Gateway:
    backends = build_backends(config, config_dir=config_dir)
    store = open_store(config.store.url)
    if router is None:
        from wattwise.routing.adapter import load_picker

        router = load_picker(config, config_dir=str(config_dir))
    return Gateway(config=config, backends=backends, store=store, router=router)
