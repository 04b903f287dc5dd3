"""The semantic cache's checks as the cache calls them: WordLlama vectors, the guard, the thresholds.

The guard and thresholds (:mod:`wattwise.cache.semantic`) work on :class:`Features`; entries keep
them as JSON (they travel through Redis), so this adapter converts at the edge.

Usage::

    check = SemanticCheck.load(max_error=0.01)       # reads WordLlama's weights from its package
    asked, cached = check.features("What is 12 x 7?"), entry.features
    check.verdict(check.klass(cached, asked), 0.97, refused=check.differs(cached, asked) is not None)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wattwise.cache.semantic import Features, Guard, Thresholds, same_answer
from wattwise.routing.embed import Embedder


class SemanticCheck:
    """:class:`~wattwise.cache.cache.Semantic` over one embedder, guard and set of thresholds."""

    def __init__(self, *, embedder: Embedder, guard: Guard, thresholds: Thresholds) -> None:
        self.embedder = embedder
        self.guard = guard
        self.thresholds = thresholds

    @classmethod
    def load(cls, *, max_error: float, embedder: Embedder | None = None) -> SemanticCheck:
        emb = embedder if embedder is not None else Embedder.load()
        return cls(embedder=emb, guard=Guard(emb), thresholds=Thresholds(max_error=max_error))

    def embed(self, text: str) -> np.ndarray:
        return self.embedder.vector(text)

    def features(self, text: str) -> dict[str, Any]:
        return self.guard.features(text).to_dict()

    def differs(self, cached: dict[str, Any], asked: dict[str, Any]) -> str | None:
        return self.guard.differs(Features.from_dict(cached), Features.from_dict(asked))

    def klass(self, cached: dict[str, Any], asked: dict[str, Any]) -> str:
        return self.guard.klass(Features.from_dict(cached), Features.from_dict(asked))

    def verdict(self, klass: str, similarity: float, *, refused: bool) -> str:
        return self.thresholds.verdict(klass, similarity, refused=refused)

    def observe(self, klass: str, similarity: float, same: bool, refused: bool) -> None:
        self.thresholds.observe(klass, similarity, same, refused=refused)

    def same_answer(self, cached: str, fresh: str) -> bool:
        return same_answer(cached, fresh, guard=self.guard)
