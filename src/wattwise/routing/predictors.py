"""Per-model predictors: probability of a good answer, output length, and effective prices.

Each model seen in training gets a :class:`ModelHead`: an L2-regularised logistic regression of the
score on the prompt features (calibrated by construction; measured in ``docs/routing.md``), a ridge
regression of ``log1p(output tokens)``, and the prices that best explain its recorded costs
(non-negative least squares of cost on input and output tokens). A model with few examples is
shrunk to its mean score; one with none gets a price-class prior (see :func:`price_class_prior`).

Usage::

    heads = fit_heads(table, featurizer)           # table: {prompt_id: {model: Outcome}}
    bank = HeadBank(heads)
    quality, out_tokens = bank.predict(featurizer.transform_one("What is 2+2?"))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wattwise.outcomes import Outcome
from wattwise.routing.features import Featurizer, _rounded, estimate_tokens

MIN_EXAMPLES = 20  # below this a model's head is its mean score: a regression would be noise
PRIOR_WIDTH = 1.0  # kernel width in natural-log cost units for the price-class prior


@dataclass(frozen=True, kw_only=True)
class ModelHead:
    """Everything learned about one model from training data."""

    name: str
    n_examples: int
    mean_score: float
    q_coef: tuple[float, ...]
    q_bias: float
    len_coef: tuple[float, ...]
    len_bias: float
    usd_per_in_token: float
    usd_per_out_token: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_examples": self.n_examples,
            "mean_score": self.mean_score,
            "q_coef": _rounded(np.asarray(self.q_coef), 5),
            "q_bias": self.q_bias,
            "len_coef": _rounded(np.asarray(self.len_coef), 5),
            "len_bias": self.len_bias,
            "usd_per_in_token": self.usd_per_in_token,
            "usd_per_out_token": self.usd_per_out_token,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ModelHead:
        return cls(
            name=obj["name"],
            n_examples=int(obj["n_examples"]),
            mean_score=obj["mean_score"],
            q_coef=tuple(obj["q_coef"]),
            q_bias=obj["q_bias"],
            len_coef=tuple(obj["len_coef"]),
            len_bias=obj["len_bias"],
            usd_per_in_token=obj["usd_per_in_token"],
            usd_per_out_token=obj["usd_per_out_token"],
        )


class HeadBank:
    """All heads stacked, so one prompt is scored for every model with two matrix products.

    Usage::

        bank = HeadBank(heads)
        q, out_tok = bank.predict(x)      # dicts keyed by model name
    """

    def __init__(self, heads: Sequence[ModelHead]) -> None:
        self.heads = {h.name: h for h in heads}
        self.names = [h.name for h in heads]
        dim = len(heads[0].q_coef) if heads else 0
        self._wq = np.array([h.q_coef for h in heads], dtype=np.float64).reshape(len(heads), dim)
        self._bq = np.array([h.q_bias for h in heads], dtype=np.float64)
        self._wl = np.array([h.len_coef for h in heads], dtype=np.float64).reshape(len(heads), dim)
        self._bl = np.array([h.len_bias for h in heads], dtype=np.float64)

    def predict(self, x: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
        """Probability of a good answer and expected output tokens, per known model."""
        if not self.names:
            return {}, {}
        q = 1.0 / (1.0 + np.exp(-(self._wq @ x + self._bq)))
        out = np.expm1(np.clip(self._wl @ x + self._bl, 0.0, 12.0))
        return dict(zip(self.names, q.tolist(), strict=True)), dict(
            zip(self.names, out.tolist(), strict=True)
        )


def tokens_in(row: Outcome) -> int:
    return row.input_tokens if row.input_tokens is not None else estimate_tokens(row.prompt)


def tokens_out(row: Outcome) -> int | None:
    if row.output_tokens is not None:
        return row.output_tokens
    return estimate_tokens(row.response) if row.response is not None else None


def fit_prices(rows: Sequence[Outcome]) -> tuple[float, float]:
    """USD per input and output token that best explain the rows' recorded costs (both >= 0)."""
    from scipy.optimize import nnls  # scipy comes with scikit-learn; imported late to keep import cheap

    data = [(tokens_in(r), tokens_out(r) or 0, r.cost_usd) for r in rows if r.cost_usd is not None]
    if not data:
        return 0.0, 0.0
    arr = np.array(data, dtype=np.float64)
    scale = arr[:, :2].max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(arr[:, :2] / scale, arr[:, 2])
    return float(coef[0] / scale[0]), float(coef[1] / scale[1])


def fit_head(name: str, rows: Sequence[Outcome], X: np.ndarray, *, c: float = 0.3) -> ModelHead:
    """Fit one model's head on its rows; ``X`` holds the rows' feature vectors in the same order."""
    from sklearn.linear_model import LogisticRegression, Ridge

    y = np.array([r.score for r in rows], dtype=np.float64)
    dim = X.shape[1]
    mean = float(y.mean()) if len(y) else 0.5
    q_coef, q_bias = np.zeros(dim), _logit(_shrunk_mean(y))
    labels = (y >= 0.5).astype(int)
    if len(y) >= MIN_EXAMPLES and 0 < labels.sum() < len(labels):
        lr = LogisticRegression(C=c, max_iter=3000).fit(X, labels, sample_weight=None)
        q_coef, q_bias = lr.coef_[0], float(lr.intercept_[0])
    outs = [(i, t) for i, t in enumerate(tokens_out(r) for r in rows) if t is not None]
    len_coef, len_bias = np.zeros(dim), 0.0
    if outs:
        idx = np.array([i for i, _ in outs])
        target = np.log1p(np.array([t for _, t in outs], dtype=np.float64))
        len_bias = float(target.mean())
        if len(outs) >= MIN_EXAMPLES:
            ridge = Ridge(alpha=3.0).fit(X[idx], target)
            len_coef, len_bias = ridge.coef_, float(ridge.intercept_)
    p_in, p_out = fit_prices(rows)
    return ModelHead(
        name=name,
        n_examples=len(rows),
        mean_score=round(mean, 6),
        q_coef=tuple(q_coef.tolist()),
        q_bias=q_bias,
        len_coef=tuple(len_coef.tolist()),
        len_bias=len_bias,
        usd_per_in_token=p_in,
        usd_per_out_token=p_out,
    )


def fit_heads(
    table: Mapping[str, Mapping[str, Outcome]],
    featurizer: Featurizer,
    *,
    c: float = 0.3,
    progress: Callable[[str], None] | None = None,
) -> list[ModelHead]:
    """One head per model found in ``table`` (``{prompt_id: {model: Outcome}}``)."""
    pids = sorted(table)
    X = featurizer.transform([next(iter(table[p].values())).prompt for p in pids])
    row_of = {p: i for i, p in enumerate(pids)}
    models = sorted({m for per in table.values() for m in per})
    heads = []
    for name in models:
        mine = [(row_of[p], table[p][name]) for p in pids if name in table[p]]
        heads.append(fit_head(name, [r for _, r in mine], X[[i for i, _ in mine]], c=c))
        if progress is not None:
            progress(name)
    return heads


def price_class_prior(cost: float | None, known: Mapping[str, tuple[float, float]]) -> float:
    """Quality prior for a model without training data, from where its cost sits among known models.

    ``known`` maps a model to (predicted quality, predicted cost) for this prompt. The prior is the
    known qualities averaged with a Gaussian kernel on log cost: a model priced like the known
    small ones is expected to answer like them. With no price, the median known quality.
    """
    if not known:
        return 0.5
    qs = sorted(q for q, _ in known.values())
    if cost is None or cost <= 0:
        return qs[len(qs) // 2]
    weights = [
        (math.exp(-((math.log(cost) - math.log(max(c, 1e-12))) ** 2) / (2 * PRIOR_WIDTH**2)), q)
        for q, c in known.values()
    ]
    total = sum(w for w, _ in weights)
    if total < 1e-9:  # far outside the known range: take the nearest end
        nearest = min(known.values(), key=lambda qc: abs(math.log(cost) - math.log(max(qc[1], 1e-12))))
        return nearest[0]
    return sum(w * q for w, q in weights) / total


def _shrunk_mean(y: np.ndarray, *, strength: float = 2.0) -> float:
    """Mean score pulled toward 0.5 by ``strength`` pseudo-examples (a Beta(1,1)-like prior)."""
    return float((y.sum() + 0.5 * strength) / (len(y) + strength))


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))
