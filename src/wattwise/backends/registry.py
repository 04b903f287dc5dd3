"""Backends by name, from the ``wattwise.backends`` entry-point group.

Built-in backends are declared in wattwise's own ``pyproject.toml`` the same way a third-party
package declares its own: ``[project.entry-points."wattwise.backends"] name = "module:factory"``.
A factory takes ``(name, ModelConfig, BuildContext)`` and returns a :class:`Backend`.

Usage::

    backend = build_backend("fast", cfg.models["fast"], BuildContext())
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from wattwise.backends.base import Backend
from wattwise.config import ModelConfig
from wattwise.exceptions import ConfigError

GROUP = "wattwise.backends"
Factory = Callable[[str, ModelConfig, "BuildContext"], Backend]


@dataclass(kw_only=True)
class BuildContext:
    """What backends may share while a gateway is built (e.g. one parsed outcomes file)."""

    cache: dict[Any, Any] = field(default_factory=dict)
    config_dir: str = "."


def available() -> dict[str, Factory]:
    """Every registered backend factory by name."""
    return {ep.name: ep.load() for ep in entry_points(group=GROUP)}


def build_backend(name: str, spec: ModelConfig, context: BuildContext) -> Backend:
    """Build the backend a model's config names; an unknown backend is a config error."""
    factories = {ep.name: ep for ep in entry_points(group=GROUP)}
    if spec.backend not in factories:
        known = ", ".join(sorted(factories))
        raise ConfigError(f"unknown backend {spec.backend!r} (known: {known})",
                          key=f"models.{name}.backend")
    factory: Factory = factories[spec.backend].load()
    return factory(name, spec, context)
