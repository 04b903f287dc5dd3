"""The cascade acceptor: after some models have answered, how likely is each distinct answer right?

The answers of the models called so far are grouped by value (:func:`answer_key`; a free-text answer
is a group of its own). Each group is described by its votes (share, how many, the prompt-predicted
quality of the models that gave it and of those that gave another answer), by which models gave it
(one learned weight per trained model: identity is learned, never named) and by the format of its
answer. A logistic regression trained on recorded outcomes turns that into P(the group's answer is
right). A cascade accepts the best group when P reaches its threshold, else calls the next model;
after the last model the best group is kept, so reliable cheap voters can overrule the top model.

Usage::

    acc = Acceptor.fit(examples, models=["small", "big"])
    groups = acc.groups([("small", "B"), ("big", "B")], prior={"small": 0.6, "big": 0.9})
    groups[0].key, groups[0].p          # best group first
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wattwise.routing.answers import FEATURE_NAMES, answer_key, response_features

GENERIC = (
    "bias",
    "vote_share",
    "log_votes",
    "log_others",
    "voter_logit_sum",
    "other_logit_sum",
    "voter_logit_max",
    "called_logit_max",
    "comparable_groups",
)


@dataclass(frozen=True, kw_only=True)
class Group:
    """One distinct answer among the calls made: its key, who gave it, its representative call
    (index into the calls) and the acceptor's probability that it is right."""

    key: str | None
    members: tuple[str, ...]
    index: int
    p: float


@dataclass(frozen=True, kw_only=True)
class Example:
    """A training row: the calls made for one prompt, the priors, and each call's score."""

    calls: tuple[tuple[str, str | None], ...]
    prior: Mapping[str, float]
    scores: tuple[float, ...]
    prompt_id: str = ""


def _logit(p: float) -> float:
    p = min(max(p, 1e-3), 1 - 1e-3)
    return math.log(p / (1 - p))


def grouped(calls: Sequence[tuple[str, str | None]], prior: Mapping[str, float]) -> list[list[int]]:
    """Indices of the calls grouped by answer key; a call without a key is alone. Within a group the
    call of the model with the best prior comes first (it represents the group)."""
    by_key: dict[str, list[int]] = {}
    out: list[list[int]] = []
    for i, (_, text) in enumerate(calls):
        key = answer_key(text)
        if key is None:
            out.append([i])
        else:
            by_key.setdefault(key, []).append(i)
    out.extend(by_key.values())
    return [sorted(g, key=lambda i: -prior.get(calls[i][0], 0.5)) for g in out]


class Acceptor:
    """P(an answer group is right) from votes, voters and format; weights stored as JSON.

    Usage::

        acc = Acceptor.from_json(obj)
        best = acc.groups(calls, prior)[0]
    """

    def __init__(
        self, *, models: Sequence[str], coef: Sequence[float] | np.ndarray, bias: float = 0.0
    ) -> None:
        self.models = list(models)
        self._slot = {m: i for i, m in enumerate(self.models)}
        self.coef = np.asarray(coef, dtype=np.float64)
        self.bias = float(bias)

    @staticmethod
    def width(n_models: int) -> int:
        return len(GENERIC) + len(FEATURE_NAMES) + 3 * n_models

    def features(
        self, calls: Sequence[tuple[str, str | None]], prior: Mapping[str, float], group: Sequence[int]
    ) -> np.ndarray:
        """The feature vector of one group of ``calls`` (indices ``group``)."""
        keys = [answer_key(t) for _, t in calls]
        key = keys[group[0]]
        inside = set(group)
        voters = [calls[i][0] for i in group]
        others = [calls[i][0] for i in range(len(calls)) if i not in inside]
        lg = {m: _logit(prior.get(m, 0.5)) for m, _ in calls}
        generic = [
            1.0,
            len(voters) / len(calls),
            math.log(len(voters)),
            math.log1p(len(others)),
            sum(lg[m] for m in voters) / 4.0,
            sum(lg[m] for m in others) / 4.0 if key is not None else 0.0,
            max(lg[m] for m in voters) / 4.0,
            max(lg.values()) / 4.0,
            math.log(len({k for k in keys if k is not None}) or 1),
        ]
        ident = np.zeros(3 * len(self.models))
        for m in voters:
            slot = self._slot.get(m)
            if slot is not None:
                ident[3 * slot + (0 if key is not None else 1)] = 1.0
        if key is not None:
            for m in others:
                slot = self._slot.get(m)
                if slot is not None:
                    ident[3 * slot + 2] = 1.0
        fmt = response_features(calls[group[0]][1], key)
        return np.concatenate([np.asarray(generic + fmt), ident])

    def groups(self, calls: Sequence[tuple[str, str | None]], prior: Mapping[str, float]) -> list[Group]:
        """The answer groups of ``calls`` (``(model, response text)`` in call order), most likely
        right first. ``prior``: each model's prompt-predicted quality."""
        if not calls:
            return []
        found = []
        for g in grouped(calls, prior):
            z = float(self.features(calls, prior, g) @ self.coef) + self.bias
            p = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))
            found.append(
                Group(key=answer_key(calls[g[0]][1]), members=tuple(calls[i][0] for i in g), index=g[0], p=p)
            )
        return sorted(found, key=lambda grp: (-grp.p, grp.index))

    def to_json(self) -> dict[str, Any]:
        return {"models": self.models, "coef": [round(float(c), 6) for c in self.coef], "bias": self.bias}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Acceptor:
        return cls(models=obj["models"], coef=obj["coef"], bias=float(obj.get("bias", 0.0)))

    @classmethod
    def fit(cls, examples: Sequence[Example], *, models: Sequence[str], c: float = 1.0) -> Acceptor:
        """Fit on every answer group of every example; a group's label is its representative's
        score (a fractional score counts as that share of a right answer)."""
        from sklearn.linear_model import LogisticRegression

        blank = cls(models=models, coef=np.zeros(cls.width(len(models))))
        X, y, w = design(blank, examples)
        if len(set(y.tolist())) < 2:  # one class only: the base rate is all there is to learn
            base = float(np.mean(y)) if len(y) else 0.5
            return cls(models=models, coef=np.zeros(X.shape[1]), bias=_logit(base))
        lr = LogisticRegression(C=c, max_iter=2000, fit_intercept=False).fit(X, y, sample_weight=w)
        return cls(models=models, coef=lr.coef_[0], bias=0.0)


def design(acc: Acceptor, examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature rows, labels and weights of every group of every example (soft scores split into a
    right row weighted by the score and a wrong row weighted by its complement)."""
    rows: list[np.ndarray] = []
    labels: list[float] = []
    weights: list[float] = []
    for ex in examples:
        for g in grouped(ex.calls, ex.prior):
            x = acc.features(ex.calls, ex.prior, g)
            s = float(ex.scores[g[0]])
            for label, weight in ((1.0, s), (0.0, 1.0 - s)):
                if weight > 0:
                    rows.append(x)
                    labels.append(label)
                    weights.append(weight)
    width = acc.width(len(acc.models))
    return np.array(rows).reshape(-1, width), np.array(labels), np.array(weights)
