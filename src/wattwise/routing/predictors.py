"""Predictors of quality, output length and price for every trained model, and priors for new ones.

* quality: one :class:`~wattwise.routing.irt.JointModel` over all models (shared prompt difficulty,
  per-model ability, per-model residual), trained on the fractional scores, so its output is the
  expected score;
* output length: the same joint form with squared loss on ``log1p(output tokens)``; the mean of the
  implied log-normal (``exp(mu + sigma^2/2)``) is the expected token count, so predicted costs are
  not biased low;
* prices: the $/input-token and $/output-token that best explain each model's recorded costs
  (non-negative least squares);
* models without data: :func:`prior_bias` places a new model's ability among the known candidates
  from what the config says of it (rating, size, price, family); its prompt part is the average
  model's. As the model's own outcomes arrive, retraining gives it its own ability and residual.

Usage::

    bank = fit_bank(table, featurizer)           # table: {prompt_id: {model: [Outcome, ...]}}
    quality, out_tokens = bank.predict(featurizer.transform_one("What is 2+2?"))
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wattwise.outcomes import Outcome
from wattwise.routing.features import Featurizer, estimate_tokens
from wattwise.routing.irt import JointModel, Penalties

PRIOR_WIDTH = 1.0  # kernel width in natural-log cost units for the price prior
FAMILY_WEIGHT = 3.0  # a known model of the same family counts this much more in the price prior
MAX_TOKENS_LOG = 12.0  # log1p of the longest output we ever predict (~160k tokens)
QUALITY_PENALTIES = Penalties(shared=0.1, skills=0.01, residual=0.1)
# multiples of the base penalties tried by cross-validation, stiffest first (each fit warm-starts the next)
STRENGTHS = (30.0, 10.0, 3.0, 1.0, 0.3)
RESIDUAL_SPLITS = (0.3, 3.0)  # then the residuals alone: looser or stiffer than the rest
CV_FOLDS = 3
LENGTH_PENALTIES = Penalties(shared=0.03, skills=0.01, residual=0.1)


@dataclass(frozen=True, kw_only=True)
class ModelStats:
    """What the training data says of one model apart from the joint models."""

    name: str
    n_examples: int
    mean_score: float
    usd_per_in_token: float
    usd_per_out_token: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_examples": self.n_examples,
            "mean_score": round(self.mean_score, 6),
            "usd_per_in_token": float(f"{self.usd_per_in_token:.6g}"),
            "usd_per_out_token": float(f"{self.usd_per_out_token:.6g}"),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ModelStats:
        return cls(
            name=obj["name"],
            n_examples=int(obj["n_examples"]),
            mean_score=float(obj["mean_score"]),
            usd_per_in_token=float(obj["usd_per_in_token"]),
            usd_per_out_token=float(obj["usd_per_out_token"]),
        )


class Bank:
    """The joint quality and length models with per-model stats, scored for one prompt at once.

    Usage::

        q, out_tok = bank.predict(x)      # dicts keyed by model name
    """

    def __init__(
        self,
        *,
        quality: JointModel,
        length: JointModel,
        stats: Sequence[ModelStats],
        tuning: Mapping[str, Any] | None = None,
    ) -> None:
        self.quality = quality
        self.tuning = dict(tuning or {})  # the penalties and Platt step cross-validation chose
        self.length = length
        self.stats = {s.name: s for s in stats}
        self.names = list(quality.names)
        self._smear = 0.5 * length.spread

    def predict(self, x: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
        """Expected score and expected output tokens, per known model."""
        q = self.quality.predict(x)[0]
        mu = self.length.linear(x)[0] + self._smear
        out = np.expm1(np.clip(mu, 0.0, MAX_TOKENS_LOG))
        return dict(zip(self.names, q.tolist(), strict=True)), dict(zip(self.names, out.tolist(), strict=True))

    def common_logit(self, x: np.ndarray) -> float:
        """The prompt's logit for an average model, without its ability (for priors)."""
        return float(self.quality.common(x)[0])

    def to_json(self) -> dict[str, Any]:
        return {
            "quality": self.quality.to_json(),
            "length": self.length.to_json(),
            "models": [self.stats[n].to_json() for n in self.names],
            "tuning": self.tuning,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Bank:
        return cls(
            quality=JointModel.from_json(obj["quality"]),
            length=JointModel.from_json(obj["length"]),
            stats=[ModelStats.from_json(m) for m in obj["models"]],
            tuning=obj.get("tuning"),
        )


def tokens_in(row: Outcome) -> int:
    return row.input_tokens if row.input_tokens is not None else estimate_tokens(row.prompt)


def tokens_out(row: Outcome) -> int | None:
    if row.output_tokens is not None:
        return row.output_tokens
    return estimate_tokens(row.response) if row.response is not None else None


def fit_prices(rows: Sequence[Outcome]) -> tuple[float, float]:
    """USD per input and output token that best explain the rows' recorded costs (both >= 0)."""
    from scipy.optimize import nnls  # imported late to keep `import wattwise` cheap

    data = [(tokens_in(r), tokens_out(r) or 0, r.cost_usd) for r in rows if r.cost_usd is not None]
    if not data:
        return 0.0, 0.0
    arr = np.array(data, dtype=np.float64)
    scale = arr[:, :2].max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(arr[:, :2] / scale, arr[:, 2])
    return float(coef[0] / scale[0]), float(coef[1] / scale[1])


def fit_bank(
    table: Mapping[str, Mapping[str, Sequence[Outcome]]],
    featurizer: Featurizer,
    *,
    rank: int = 0,
    penalty: tuple[float, float] | None = None,
) -> Bank:
    """Fit the quality and length models on ``{prompt_id: {model: [Outcome, ...]}}``.

    BLAS runs single-threaded here: these are many small products, where OpenBLAS's threads cost
    15x more than they save on a busy machine (measured), and retraining runs beside serving."""
    from threadpoolctl import threadpool_limits  # comes with scikit-learn

    with threadpool_limits(limits=1):
        return _fit_bank(table, featurizer, rank=rank, penalty=penalty)


def _fit_bank(
    table: Mapping[str, Mapping[str, Sequence[Outcome]]],
    featurizer: Featurizer,
    *,
    rank: int,
    penalty: tuple[float, float] | None,
) -> Bank:
    pids = sorted(table)
    names = sorted({m for per in table.values() for m in per})
    col = {m: j for j, m in enumerate(names)}
    X = featurizer.transform([next(iter(table[p].values()))[0].prompt for p in pids])
    shape = (len(pids), len(names))
    score, count, length, has_len = np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape)
    per_model: dict[str, list[Outcome]] = {m: [] for m in names}
    for i, pid in enumerate(pids):
        for model, rows in table[pid].items():
            j = col[model]
            per_model[model].extend(rows)
            score[i, j] = sum(r.score for r in rows) / len(rows)
            count[i, j] = len(rows)
            outs = [t for t in map(tokens_out, rows) if t is not None]
            if outs:
                length[i, j] = float(np.mean(np.log1p(outs)))
                has_len[i, j] = len(outs)
    strength, split, (slope, shift) = choose_strength(X, score, count, names=names, rank=rank, fixed=penalty)
    quality = JointModel.fit(X, score, count, names=names, rank=rank, penalties=_scaled(strength, split))
    quality = quality.recalibrated(slope, shift)
    tuning = {"strength": strength, "residual_split": split, "platt": [round(slope, 4), round(shift, 4)]}
    if has_len.any():
        # Models with no recorded lengths start at the pooled mean: the penalty keeps them there.
        pooled = float((length * has_len).sum() / has_len.sum())
        filled = np.where(has_len.sum(axis=0) > 0, 0.0, 1e-6)
        lengths = JointModel.fit(
            X, np.where(has_len > 0, length, pooled), has_len + filled, names=names, rank=0,
            loss="squared", penalties=LENGTH_PENALTIES,
        )
    else:
        lengths = _constant_length(names, X.shape[1], math.log1p(256.0))
    stats = []
    for m in names:
        rows = per_model[m]
        p_in, p_out = fit_prices(rows)
        stats.append(
            ModelStats(
                name=m,
                n_examples=len(rows),
                mean_score=float(np.mean([r.score for r in rows])),
                usd_per_in_token=p_in,
                usd_per_out_token=p_out,
            )
        )
    return Bank(quality=quality, length=lengths, stats=stats, tuning=tuning)


def _scaled(strength: float, split: float = 1.0) -> Penalties:
    base = QUALITY_PENALTIES
    return Penalties(
        shared=base.shared * strength, skills=base.skills * strength, residual=base.residual * strength * split,
        bias=base.bias,
    )


def choose_strength(
    X: np.ndarray,
    Y: np.ndarray,
    W: np.ndarray,
    *,
    names: Sequence[str],
    rank: int,
    fixed: tuple[float, float] | None = None,
) -> tuple[float, float, tuple[float, float]]:
    """The penalty multiple, then the residuals' extra multiple, with the lowest cross-validated log
    loss (folds by prompt): a small file gets a stiffer model than a large one, and the per-model
    residuals get as much freedom as the data supports. Also a Platt correction (slope, shift of
    the logit) fitted on the chosen setting's out-of-fold predictions, so the shipped model is
    calibrated out of sample, not only in sample. ``fixed`` = (strength, residual split) skips the
    search (3 fits instead of 24: a retrain that reuses the serving router's choice)."""
    n = len(X)
    if n < 3 * CV_FOLDS:
        return (fixed or (STRENGTHS[0], 1.0)) + ((1.0, 0.0),)
    fold = np.arange(n) % CV_FOLDS
    np.random.default_rng(0).shuffle(fold)
    warm: list[JointModel | None] = [None] * CV_FOLDS

    oof = np.zeros_like(Y)

    def cv_loss(strength: float, split: float) -> float:
        total = 0.0
        for k in range(CV_FOLDS):
            tr, te = fold != k, fold == k
            model = JointModel.fit(
                X[tr], Y[tr], W[tr], names=names, rank=rank, penalties=_scaled(strength, split), start=warm[k]
            )
            warm[k] = model
            oof[te] = model.linear(X[te])
            p = np.clip(model.predict(X[te]), 1e-6, 1 - 1e-6)
            total -= float((W[te] * (Y[te] * np.log(p) + (1 - Y[te]) * np.log(1 - p))).sum())
        return total

    if fixed is not None:
        strength, split = fixed
    else:
        losses = [cv_loss(s, 1.0) for s in STRENGTHS]
        strength = STRENGTHS[int(np.argmin(losses))]
        splits = [(losses[int(np.argmin(losses))], 1.0)] + [(cv_loss(strength, f), f) for f in RESIDUAL_SPLITS]
        split = min(splits)[1]
    cv_loss(strength, split)  # leaves that setting's out-of-fold logits in `oof`
    return strength, split, platt(oof, Y, W)


def platt(z: np.ndarray, Y: np.ndarray, W: np.ndarray) -> tuple[float, float]:
    """Slope and shift of the logit that minimise the log loss of (fractional) scores ``Y``."""
    from scipy.optimize import minimize

    z, y, w = z.ravel(), Y.ravel(), W.ravel()

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        eta = theta[0] * z + theta[1]
        g = w * (1.0 / (1.0 + np.exp(-eta)) - y)
        return float((w * (np.logaddexp(0.0, eta) - y * eta)).sum()), np.array([g @ z, g.sum()])

    found = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(0.25, 4.0), (-3, 3)])
    return float(found.x[0]), float(found.x[1])


def _constant_length(names: Sequence[str], dim: int, value: float) -> JointModel:
    m = len(names)
    return JointModel(
        names=names, bias=np.full(m, value), shared=np.zeros(dim), basis=np.zeros((dim, 0)),
        skills=np.zeros((m, 0)), residual=np.zeros((dim, m)), loss="squared",
    )


@dataclass(frozen=True, kw_only=True)
class Known:
    """A trained candidate as the prior sees it: its ability and what the config says of it."""

    ability: float  # logit-scale bias of the quality model
    cost: float | None  # predicted cost of this prompt at the configured price
    rating: float | None = None
    params_b: float | None = None
    family: str | None = None


def prior_bias(
    known: Sequence[Known],
    *,
    cost: float | None,
    rating: float | None = None,
    params_b: float | None = None,
    family: str | None = None,
) -> tuple[float, str]:
    """Ability (logit bias) of a model without data, placed among the known candidates, and how.

    In order, the first that applies: a public ``rating`` (a linear fit of ability on rating over
    known candidates that have one; needs two distinct ratings); size ``params_b`` (the same on
    log size); price (known abilities averaged with a Gaussian kernel on log cost, same ``family``
    weighted x3); ``family`` alone (mean ability of that family); else the median known ability.
    """
    if not known:
        return 0.0, "no known models"
    abilities = [k.ability for k in known]
    lo, hi = min(abilities) - 1.0, max(abilities) + 1.0
    if rating is not None:
        fit = _line([(k.rating, k.ability) for k in known if k.rating is not None], rating)
        if fit is not None:
            return min(max(fit, lo), hi), "rating"
    if params_b is not None and params_b > 0:
        pairs = [(math.log(k.params_b), k.ability) for k in known if k.params_b]
        fit = _line(pairs, math.log(params_b))
        if fit is not None:
            return min(max(fit, lo), hi), "size"
    priced = [k for k in known if k.cost is not None and k.cost > 0]
    if cost is not None and cost > 0 and priced:
        weights = []
        for k in priced:
            assert k.cost is not None
            w = math.exp(-((math.log(cost) - math.log(k.cost)) ** 2) / (2 * PRIOR_WIDTH**2))
            weights.append(w * (FAMILY_WEIGHT if family and k.family == family else 1.0))
        total = sum(weights)
        if total < 1e-9:  # far outside the known range: take the nearest end
            assert all(k.cost is not None for k in priced)
            nearest = min(priced, key=lambda k: abs(math.log(cost) - math.log(k.cost or 1e-12)))
            return nearest.ability, "price"
        return sum(w * k.ability for w, k in zip(weights, priced, strict=True)) / total, "price"
    same = [k.ability for k in known if family and k.family == family]
    if same:
        return statistics.fmean(same), "family"
    return statistics.median(abilities), "median"


def _line(pairs: Sequence[tuple[float | None, float]], at: float) -> float | None:
    """Least-squares line through (x, y) pairs evaluated at ``at``; slope kept >= 0."""
    xs = np.array([x for x, _ in pairs if x is not None], dtype=np.float64)
    ys = np.array([y for x, y in pairs if x is not None], dtype=np.float64)
    if len(xs) < 2 or np.ptp(xs) <= 0:
        return None
    slope, icept = np.polyfit(xs, ys, 1)
    slope = max(float(slope), 0.0)
    if slope == 0.0:
        icept = float(ys.mean())
        return icept
    return float(icept + slope * at)
