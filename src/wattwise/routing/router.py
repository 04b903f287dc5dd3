"""The router: trained predictors plus a policy registry behind one ``route`` call.

A router file is JSON (never pickle): the featurizer's vocabulary and scalings, one head per trained
model, and the default dial. ``Router.default()`` loads the one shipped in the package, trained on
``routerbench_zs.train`` only.

Usage::

    router = Router.default()
    decision = router.route("What is 2+2?", [
        Candidate(name="small", input_usd_per_mtok=0.2, output_usd_per_mtok=0.2,
                  trained_as="mistralai/mixtral-8x7b-chat"),
        Candidate(name="big", input_usd_per_mtok=10, output_usd_per_mtok=30,
                  trained_as="gpt-4-1106-preview"),
    ], quality_target=0.9)
    decision.model, decision.reason
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from wattwise.exceptions import InvalidRequest, WattwiseError
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
from wattwise.routing.predictors import HeadBank, ModelHead, price_class_prior

FORMAT = "wattwise-router/1"

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
        heads: Sequence[ModelHead],
        cost_weight: float = 0.2,
        meta: dict[str, Any] | None = None,
        policies: dict[str, Policy] | None = None,
    ) -> None:
        self.featurizer = featurizer
        self.bank = HeadBank(list(heads))
        self.cost_weight = cost_weight
        self.meta = dict(meta or {})
        self._policies = policies if policies is not None else builtin_policies()

    @classmethod
    def load(cls, path: str | Path) -> Router:
        """Read a router file written by :meth:`save`."""
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise WattwiseError(f"cannot read router file {path}: {exc}") from None
        return cls.from_json(obj, source=str(path))

    @classmethod
    def default(cls) -> Router:
        """The router shipped in the package."""
        text = resources.files("wattwise").joinpath("data/router.json").read_text(encoding="utf-8")
        return cls.from_json(json.loads(text), source="wattwise/data/router.json")

    @classmethod
    def from_json(cls, obj: dict[str, Any], *, source: str = "<router>") -> Router:
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise WattwiseError(f"{source}: not a {FORMAT} file")
        return cls(
            featurizer=Featurizer.from_json(obj["featurizer"]),
            heads=[ModelHead.from_json(h) for h in obj["heads"]],
            cost_weight=float(obj.get("cost_weight", 0.2)),
            meta=obj.get("meta", {}),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "cost_weight": self.cost_weight,
            "meta": self.meta,
            "featurizer": self.featurizer.to_json(),
            "heads": [h.to_json() for h in self.bank.heads.values()],
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), separators=(",", ":")), encoding="utf-8")

    def policies(self) -> list[str]:
        return sorted(self._policies)

    def models(self) -> list[str]:
        """Names of the models the router was trained on."""
        return list(self.bank.names)

    def estimate(self, prompt: str, candidates: Sequence[Candidate]) -> list[Estimate]:
        """Predicted quality and cost of each candidate for this prompt."""
        if not candidates:
            raise InvalidRequest("no candidate models to route among", param="model")
        quality, out_tokens = self.bank.predict(self.featurizer.transform_one(prompt))
        n_in = estimate_tokens(prompt)
        trained_cost = {
            name: self._cost(name, None, None, n_in, out_tokens[name]) for name in self.bank.names
        }
        known = {name: (quality[name], c) for name, c in trained_cost.items() if c is not None}
        typical_out = statistics.median(out_tokens.values()) if out_tokens else 256.0
        found = []
        for cand in candidates:
            key = cand.trained_as or cand.name
            if key in quality:
                cost = self._cost(
                    key, cand.input_usd_per_mtok, cand.output_usd_per_mtok, n_in, out_tokens[key]
                )
                found.append(
                    Estimate(
                        name=cand.name,
                        quality=quality[key],
                        cost_usd=cost,
                        out_tokens=out_tokens[key],
                        reasoning=cand.reasoning,
                    )
                )
                continue
            cost = _priced(cand.input_usd_per_mtok, cand.output_usd_per_mtok, n_in, typical_out)
            found.append(
                Estimate(
                    name=cand.name,
                    quality=price_class_prior(cost, known),
                    cost_usd=cost,
                    out_tokens=typical_out,
                    prior=True,
                    reasoning=cand.reasoning,
                )
            )
        return found

    def _cost(
        self, key: str, p_in: float | None, p_out: float | None, n_in: int, n_out: float
    ) -> float | None:
        head = self.bank.heads[key]
        usd_in = head.usd_per_in_token if p_in is None else p_in / 1e6
        usd_out = head.usd_per_out_token if p_out is None else p_out / 1e6
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
