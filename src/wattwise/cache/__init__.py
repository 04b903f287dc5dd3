"""The response cache: exact and semantic hits that never serve a wrong answer (see docs/cache.md).

Usage::

    cache = build_cache(config, backends=backends)    # None when [cache] enabled = false
"""

from __future__ import annotations

from typing import Any

from wattwise.cache.cache import ResponseCache
from wattwise.cache.entry import fingerprint
from wattwise.cache.stores import CacheStore, MemoryStore, RedisStore
from wattwise.config import Config


def build_cache(config: Config, *, backends: dict[str, Any], embedder: Any = None) -> ResponseCache | None:
    """The cache ``[cache]`` describes over the configured models (``None`` when it is off)."""
    spec = config.cache
    if not spec.enabled:
        return None
    store: CacheStore = (RedisStore(url=spec.url, prefix=spec.prefix, timeout_s=spec.timeout_s,
                                    max_entries=spec.max_entries) if spec.url
                         else MemoryStore(max_entries=spec.max_entries, max_bytes=spec.max_memory_mb << 20))
    fingerprints = {name: fingerprint(model) for name, model in config.models.items() if name in backends}
    semantic = None
    if spec.semantic:
        from wattwise.cache.check import SemanticCheck

        semantic = SemanticCheck.load(max_error=spec.max_error, embedder=embedder)
    return ResponseCache(config=spec, store=store, fingerprints=fingerprints, semantic=semantic)


__all__ = ["ResponseCache", "build_cache"]
