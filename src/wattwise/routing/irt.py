"""One model of every (prompt, model) pair: shared prompt difficulty, low-rank skills, small residuals.

An item-response model fitted jointly across models, so that each model's few examples add to what
every other model's examples teach about a prompt::

    logit P(good | prompt x, model m) = b_m  +  x·s  +  (x·V)·a_m  +  x·r_m

* ``b_m``: the model's overall ability (its mean score, in logits);
* ``x·s``: the prompt's easiness, shared by every model (prompt difficulty explains the largest
  share of score variance);
* ``(x·V)·a_m``: ``k`` latent skills of the prompt (``V``: D x k, shared) weighed by the model's
  abilities on them (``a_m``: k numbers per model): who is good at code, who at arithmetic;
* ``x·r_m``: a per-model residual with a much stronger penalty, which only data-rich models use.

Fitted by L-BFGS on the cross-entropy of the (fractional) scores, so the prediction is the expected
score and is calibrated by construction; every penalty is L2. The same class with ``loss="squared"``
and ``rank=0`` is the output-length model (log tokens).

Usage::

    model = JointModel.fit(X, Y, W, names=["a", "b"])   # Y, W: (prompts, models); W=0 where unseen
    P = model.predict(X)                                # (prompts, models) expected scores
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wattwise.routing.features import _rounded


@dataclass(frozen=True, kw_only=True)
class Penalties:
    """L2 strengths (per weight, on standardised features); ``bias`` pulls a model toward the mean."""

    shared: float = 1e-3
    skills: float = 3e-3
    residual: float = 3e-2
    bias: float = 1e-4


class JointModel:
    """Parameters of the joint model and its prediction; see the module docstring.

    Usage::

        JointModel.from_json(model.to_json()).predict(X)
    """

    def __init__(
        self,
        *,
        names: Sequence[str],
        bias: np.ndarray,
        shared: np.ndarray,
        basis: np.ndarray,
        skills: np.ndarray,
        residual: np.ndarray,
        loss: str = "logistic",
        spread: np.ndarray | None = None,
    ) -> None:
        self.names = list(names)
        self.bias = np.asarray(bias, dtype=np.float64)  # (M,)
        self.shared = np.asarray(shared, dtype=np.float64)  # (D,)
        self.basis = np.asarray(basis, dtype=np.float64).reshape(len(self.shared), -1)  # (D, k)
        self.skills = np.asarray(skills, dtype=np.float64).reshape(len(self.names), -1)  # (M, k)
        self.residual = np.asarray(residual, dtype=np.float64).reshape(len(self.shared), len(self.names))
        self.loss = loss
        # squared loss: residual variance per model, for the mean of a log-normal (smearing)
        self.spread = np.zeros(len(self.names)) if spread is None else np.asarray(spread, dtype=np.float64)
        self._stack()

    def _stack(self) -> None:
        # One (D, M) matrix and one (M,) vector: a prompt is scored for every model in one product.
        self._w = self.shared[:, None] + self.basis @ self.skills.T + self.residual
        self._b = self.bias

    def linear(self, X: np.ndarray) -> np.ndarray:
        """The linear predictor (logits, or log tokens), (prompts, models)."""
        return np.atleast_2d(X) @ self._w + self._b

    def predict(self, X: np.ndarray) -> np.ndarray:
        z = self.linear(X)
        if self.loss == "logistic":
            return 1.0 / (1.0 + np.exp(-z))
        return z

    def recalibrated(self, slope: float, shift: float) -> JointModel:
        """The same model with its linear predictor mapped to ``slope * eta + shift`` (Platt)."""
        return JointModel(
            names=self.names, bias=self.bias * slope + shift, shared=self.shared * slope, basis=self.basis * slope,
            skills=self.skills, residual=self.residual * slope, loss=self.loss, spread=self.spread,
        )

    def common(self, X: np.ndarray) -> np.ndarray:
        """The prompt part every model shares, plus the average model's own part: the linear
        predictor of a typical model, for priors of models without data. (prompts,)"""
        w = self.shared + self.basis @ self.skills.mean(axis=0) + self.residual.mean(axis=1)
        return np.atleast_2d(X) @ w

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        Y: np.ndarray,
        W: np.ndarray,
        *,
        names: Sequence[str],
        rank: int = 8,
        loss: str = "logistic",
        penalties: Penalties | None = None,
        seed: int = 0,
        max_iter: int = 300,
        start: JointModel | None = None,
    ) -> JointModel:
        """Fit on prompt features ``X`` (P, D), mean scores ``Y`` (P, M) and counts ``W`` (P, M)."""
        from scipy.optimize import minimize  # imported late: keeps `import wattwise` cheap

        pen = penalties or Penalties()
        _P, D = X.shape
        M = len(names)
        k = rank if M > 1 else 0
        total = max(float(W.sum()), 1.0)
        seen = W.sum(axis=0)
        means = np.where(seen > 0, (Y * W).sum(axis=0) / np.maximum(seen, 1e-12), 0.5)
        b0 = _logit(np.clip(means, 0.02, 0.98)) if loss == "logistic" else means
        b_mean = float(np.average(b0, weights=np.maximum(seen, 1e-9)))
        rng = np.random.default_rng(seed)
        sizes = [M, D, D * k, M * k, D * M]
        init = np.concatenate(
            [b0, np.zeros(D), rng.normal(0, 0.01, D * k), rng.normal(0, 0.01, M * k), np.zeros(D * M)]
        )
        cuts = np.cumsum(sizes)[:-1]
        if start is not None and start.basis.shape == (D, k) and len(start.names) == M:  # warm start
            init = np.concatenate(
                [start.bias, start.shared, start.basis.ravel(), start.skills.ravel(), start.residual.ravel()]
            )

        def unpack(theta: np.ndarray) -> tuple[np.ndarray, ...]:
            b, s, v, a, r = np.split(theta, cuts)
            return b, s, v.reshape(D, k), a.reshape(M, k), r.reshape(D, M)

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            b, s, V, A, R = unpack(theta)
            Z = X @ V
            eta = b + (X @ s)[:, None] + Z @ A.T + X @ R
            if loss == "logistic":
                # log(1 + e^eta) - y*eta, stable for any eta
                value = float((W * (np.logaddexp(0.0, eta) - Y * eta)).sum()) / total
                G = W * (1.0 / (1.0 + np.exp(-eta)) - Y) / total
            else:
                diff = eta - Y
                value = float((W * diff * diff).sum()) / (2 * total)
                G = W * diff / total
            value += (
                pen.bias * float(((b - b_mean) ** 2).sum())
                + pen.shared * float(s @ s)
                + pen.skills * float((V * V).sum() + (A * A).sum())
                + pen.residual * float((R * R).sum())
            )
            XtG = X.T @ G
            grad = np.concatenate(
                [
                    G.sum(axis=0) + 2 * pen.bias * (b - b_mean),
                    XtG.sum(axis=1) + 2 * pen.shared * s,
                    (X.T @ (G @ A) + 2 * pen.skills * V).ravel(),
                    (G.T @ Z + 2 * pen.skills * A).ravel(),
                    (XtG + 2 * pen.residual * R).ravel(),
                ]
            )
            return value, grad

        options = {"maxiter": max_iter, "ftol": 1e-8, "gtol": 1e-6}
        found = minimize(objective, init, jac=True, method="L-BFGS-B", options=options)
        b, s, V, A, R = unpack(found.x)
        spread = None
        if loss != "logistic":
            resid = (b + (X @ s)[:, None] + X @ V @ A.T + X @ R) - Y
            spread = np.where(seen > 0, (W * resid * resid).sum(axis=0) / np.maximum(seen, 1e-12), 0.0)
        return cls(names=names, bias=b, shared=s, basis=V, skills=A, residual=R, loss=loss, spread=spread)

    def to_json(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "loss": self.loss,
            "rank": int(self.basis.shape[1]),
            "bias": _rounded(self.bias, 6),
            "shared": _rounded(self.shared, 5),
            "basis": _rounded(self.basis, 4),
            "skills": _rounded(self.skills, 5),
            "residual": _rounded(self.residual, 4),
            "spread": _rounded(self.spread, 5),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> JointModel:
        return cls(
            names=obj["names"],
            bias=np.asarray(obj["bias"]),
            shared=np.asarray(obj["shared"]),
            basis=np.asarray(obj["basis"]).reshape(len(obj["shared"]), int(obj["rank"])),
            skills=np.asarray(obj["skills"]),
            residual=np.asarray(obj["residual"]),
            loss=obj["loss"],
            spread=np.asarray(obj["spread"]),
        )


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))
