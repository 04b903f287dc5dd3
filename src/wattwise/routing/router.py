"""The router: trained predictors plus a policy registry behind one ``route`` call.

A router file is JSON (never pickle): the featurizer's scalings (the embedding weights come from
the ``wordllama`` package), the joint quality and length models, per-model prices, and the default
dial. ``Router.default()`` loads the one shipped in the package; ``router.version`` is a short hash
of the file's content.

Usage::

    router = Router.default()
    decision = router.route("What is 2+2?", [
        Candidate(name="small", input_usd_per_mtok=0.2, output_usd_per_mtok=0.2,
                  trained_as="mistralai/mixtral-8x7b-chat"),
        Candidate(name="big", input_usd_per_mtok=10, output_usd_per_mtok=30,
                  trained_as="gpt-4-1106-preview"),
    ], quality_target=0.9)
    decision.model, decision.reason, router.version
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from wattwise.exceptions import InvalidRequest, WattwiseError
from wattwise.routing.embed import Embedder
from wattwise.routing.features import Featurizer, estimate_tokens
from wattwise.routing.policies import (
    Candidate,
    Dial,
    Estimate,
    Policy,
    RouteDecision,
    builtin_policies,
    check_dial,
)
from wattwise.routing.predictors import Bank, Known, prior_bias

FORMAT = "wattwise-router/2"

__all__ = ["Candidate", "RouteDecision", "Router"]


class Router:
    """Predicts each candidate's quality and cost for a prompt and lets a policy choose.

    Usage::

        router = Router.load("router.json")
        router.route(prompt, candidates, policy="cascade").steps
    """

    def __init__(
        self,
        *,
        featurizer: Featurizer,
        bank: Bank,
        cost_weight: float = 0.2,
        meta: dict[str, Any] | None = None,
        policies: dict[str, Policy] | None = None,
    ) -> None:
        self.featurizer = featurizer
        self.bank = bank
        self.cost_weight = cost_weight
        self.meta = dict(meta or {})
        self._policies = policies if policies is not None else builtin_policies()
        self._version: str | None = None

    @property
    def version(self) -> str:
        """A short content hash of the router (stable across save and load)."""
        if self._version is None:
            text = json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)
            self._version = hashlib.sha256(text.encode()).hexdigest()[:12]
        return self._version

    @classmethod
    def load(cls, path: str | Path, *, embedder: Embedder | None = None) -> Router:
        """Read a router file written by :meth:`save`."""
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise WattwiseError(f"cannot read router file {path}: {exc}") from None
        return cls.from_json(obj, source=str(path), embedder=embedder)

    @classmethod
    def default(cls, *, embedder: Embedder | None = None) -> Router:
        """The router shipped in the package."""
        text = resources.files("wattwise").joinpath("data/router.json").read_text(encoding="utf-8")
        return cls.from_json(json.loads(text), source="wattwise/data/router.json", embedder=embedder)

    @classmethod
    def from_json(
        cls, obj: dict[str, Any], *, source: str = "<router>", embedder: Embedder | None = None
    ) -> Router:
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise WattwiseError(f"{source}: not a {FORMAT} file (retrain it with `wattwise train`)")
        return cls(
            featurizer=Featurizer.from_json(obj["featurizer"], embedder=embedder),
            bank=Bank.from_json(obj["bank"]),
            cost_weight=float(obj.get("cost_weight", 0.2)),
            meta=obj.get("meta", {}),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "cost_weight": self.cost_weight,
            "meta": self.meta,
            "featurizer": self.featurizer.to_json(),
            "bank": self.bank.to_json(),
        }

    def save(self, path: str | Path) -> None:
        """Write the router as compact JSON."""
        Path(path).write_text(json.dumps(self.to_json(), separators=(",", ":")), encoding="utf-8")

    @property
    def penalty(self) -> tuple[float, float] | None:
        """The (strength, residual split) cross-validation chose when this router was trained; pass it
        to ``train_router(..., penalty=...)`` to retrain without the search."""
        tuning = self.bank.tuning
        if "strength" not in tuning:
            return None
        return float(tuning["strength"]), float(tuning.get("residual_split", 1.0))

    def policies(self) -> list[str]:
        return sorted(self._policies)

    def models(self) -> list[str]:
        """Names of the models the router was trained on."""
        return list(self.bank.names)

    def estimate(self, prompt: str, candidates: Sequence[Candidate]) -> list[Estimate]:
        """Predicted quality and cost of each candidate for this prompt."""
        if not candidates:
            raise InvalidRequest("no candidate models to route among", param="model")
        x = self.featurizer.transform_one(prompt)
        quality, out_tokens = self.bank.predict(x)
        n_in = estimate_tokens(prompt)
        found: list[Estimate | None] = []
        for cand in candidates:
            key = cand.trained_as or cand.name
            if key not in quality:
                found.append(None)
                continue
            cost = self._cost(key, cand.input_usd_per_mtok, cand.output_usd_per_mtok, n_in, out_tokens[key])
            found.append(Estimate(name=cand.name, quality=quality[key], cost_usd=cost,
                                  out_tokens=out_tokens[key], reasoning=cand.reasoning))
        if all(e is not None for e in found):
            return [e for e in found if e is not None]
        return self._with_priors(x, n_in, candidates, found, out_tokens)

    def _with_priors(
        self,
        x: Any,
        n_in: int,
        candidates: Sequence[Candidate],
        found: list[Estimate | None],
        out_tokens: dict[str, float],
    ) -> list[Estimate]:
        """Fill in candidates without training data from what the config says of them."""
        ability = dict(zip(self.bank.names, self.bank.quality.bias.tolist(), strict=True))
        known = [
            Known(ability=ability[c.trained_as or c.name], cost=e.cost_usd, rating=c.rating,
                  params_b=c.params_b, family=c.family)
            for c, e in zip(candidates, found, strict=True) if e is not None
        ]
        if not known:  # no trained model among the candidates: compare with every trained model
            known = [Known(ability=ability[m], cost=self._cost(m, None, None, n_in, out_tokens[m]))
                     for m in self.bank.names]
        typical_out = statistics.median(out_tokens.values()) if out_tokens else 256.0
        common = self.bank.common_logit(x)
        out = []
        for cand, est in zip(candidates, found, strict=True):
            if est is not None:
                out.append(est)
                continue
            cost = _priced(cand.input_usd_per_mtok, cand.output_usd_per_mtok, n_in, typical_out)
            bias, _how = prior_bias(known, cost=cost, rating=cand.rating, params_b=cand.params_b,
                                    family=cand.family)
            q = 1.0 / (1.0 + math.exp(-min(max(bias + common, -30.0), 30.0)))
            out.append(Estimate(name=cand.name, quality=q, cost_usd=cost, out_tokens=typical_out, prior=True,
                                reasoning=cand.reasoning))
        return out

    def _cost(
        self, key: str, p_in: float | None, p_out: float | None, n_in: int, n_out: float
    ) -> float | None:
        stats = self.bank.stats[key]
        usd_in = stats.usd_per_in_token if p_in is None else p_in / 1e6
        usd_out = stats.usd_per_out_token if p_out is None else p_out / 1e6
        return n_in * usd_in + n_out * usd_out

    def decide(
        self,
        estimates: Sequence[Estimate],
        *,
        policy: str = "utility",
        quality_target: float | None = None,
        max_cost_usd: float | None = None,
        cost_weight: float | None = None,
    ) -> RouteDecision:
        """Apply a policy to estimates already made (``eval`` reuses one estimate across dials)."""
        chosen = self._policies.get(policy)
        if chosen is None:
            raise InvalidRequest(
                f"unknown routing policy '{policy}'; known: {', '.join(self.policies())}", param="model"
            )
        check_dial(quality_target, max_cost_usd)
        dial = Dial(
            quality_target=quality_target,
            max_cost_usd=max_cost_usd,
            cost_weight=self.cost_weight if cost_weight is None else cost_weight,
        )
        return chosen.decide(estimates, dial)

    def route(
        self,
        prompt: str,
        candidates: Sequence[Candidate],
        *,
        policy: str = "utility",
        quality_target: float | None = None,
        max_cost_usd: float | None = None,
        cost_weight: float | None = None,
    ) -> RouteDecision:
        """Choose a candidate for ``prompt`` (the request's messages' text concatenated)."""
        if policy not in self._policies:
            raise InvalidRequest(
                f"unknown routing policy '{policy}'; known: {', '.join(self.policies())}", param="model"
            )
        check_dial(quality_target, max_cost_usd)
        return self.decide(
            self.estimate(prompt, candidates),
            policy=policy,
            quality_target=quality_target,
            max_cost_usd=max_cost_usd,
            cost_weight=cost_weight,
        )


def _priced(p_in: float | None, p_out: float | None, n_in: int, n_out: float) -> float | None:
    if p_in is None or p_out is None:
        return None
    return (n_in * p_in + n_out * p_out) / 1e6
