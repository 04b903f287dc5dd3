"""Routing policies: each turns per-candidate estimates and the request's dial into a decision.

A policy is a small object with a ``name`` and ``decide(estimates, dial) -> RouteDecision``; the
router picks one by name from the registry that :func:`builtin_policies` builds. No model names or
prices live here: they come from the candidates (config) and the estimates (trained router).

Usage::

    policies = builtin_policies()
    decision = policies["utility"].decide(estimates, Dial(cost_weight=0.2))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from wattwise.exceptions import InvalidRequest


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """A model the gateway may route to.

    Usage::

        Candidate(name="small", input_usd_per_mtok=0.2, output_usd_per_mtok=0.6, trained_as="mixtral")
    """

    name: str
    input_usd_per_mtok: float | None
    output_usd_per_mtok: float | None
    trained_as: str | None = None
    reasoning: bool = False  # a reasoning model or one with a thinking mode
    # What the config knows of a model, for the prior of one without training data.
    params_b: float | None = None  # size, billions of parameters
    family: str | None = None  # e.g. "llama", "mistral": same-family models weigh more in the prior
    rating: float | None = None  # a public rating on one scale for all candidates (e.g. Arena Elo)


@dataclass(frozen=True, kw_only=True)
class RouteDecision:
    """What the router chose and why; ``steps`` lists the models a multi-call policy plans to use.

    Usage::

        decision.model, decision.reason      # -> "small", "utility: small q=0.81 ..."
    """

    model: str
    policy: str
    reason: str
    predicted_quality: float | None
    predicted_cost_usd: float | None
    steps: tuple[str, ...] = ()
    n: int = 1
    reasoning_effort: str | None = None
    max_thinking_tokens: int | None = None


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """The router's view of one candidate for one prompt."""

    name: str
    quality: float
    cost_usd: float | None
    out_tokens: float
    prior: bool = False  # True: no training data, quality is the price-class prior
    reasoning: bool = False


@dataclass(frozen=True, kw_only=True)
class Dial:
    """The request's quality/cost dial. Exactly one of the three drives the choice, in this order:
    ``max_cost_usd`` caps cost first; then ``quality_target`` (fraction of the best candidate's
    expected quality) or else ``cost_weight`` (λ on cost relative to the dearest candidate)."""

    quality_target: float | None = None
    max_cost_usd: float | None = None
    cost_weight: float = 0.2
    extras: dict[str, float] = field(default_factory=dict)


class Policy(Protocol):
    name: str

    def decide(self, estimates: Sequence[Estimate], dial: Dial) -> RouteDecision: ...


def _cost(e: Estimate, fallback: float) -> float:
    return e.cost_usd if e.cost_usd is not None else fallback


def _fmt(e: Estimate) -> str:
    cost = "unknown" if e.cost_usd is None else f"${e.cost_usd:.2g}"
    return f"{e.name} q={e.quality:.2f} cost={cost}"


def prior_note(estimates: Sequence[Estimate]) -> str:
    """The part of a reason that says which candidates had no training data."""
    names = [e.name for e in estimates if e.prior]
    return f"; no training data for {','.join(names)}: price-class prior" if names else ""


def utility_choice(estimates: Sequence[Estimate], dial: Dial) -> tuple[Estimate, str]:
    """The candidate with the best expected quality minus λ·relative cost, under the dial."""
    known = [e.cost_usd for e in estimates if e.cost_usd is not None]
    top_cost = max(known, default=0.0)  # unknown price: assume the dearest, to be safe
    scale = top_cost if top_cost > 0 else 1.0
    pool = list(estimates)
    how = ""
    if dial.max_cost_usd is not None:
        pool = [e for e in estimates if e.cost_usd is not None and e.cost_usd <= dial.max_cost_usd]
        how = f"max_cost_usd={dial.max_cost_usd:g}"
        if not pool:
            cheapest = min(estimates, key=lambda e: _cost(e, top_cost))
            return cheapest, f"{how} unreachable, cheapest"
    if dial.quality_target is not None:
        best_q = max(e.quality for e in estimates)
        good = [e for e in pool if e.quality >= dial.quality_target * best_q - 1e-12]
        tag = f"quality_target={dial.quality_target:g}"
        how = f"{how} {tag}".strip()
        if good:
            return min(good, key=lambda e: (_cost(e, top_cost), -e.quality)), how
        return max(pool, key=lambda e: e.quality), how + " unreachable, best"
    if dial.max_cost_usd is not None:
        return max(pool, key=lambda e: e.quality), how
    lam = dial.cost_weight
    pick = max(pool, key=lambda e: (e.quality - lam * _cost(e, top_cost) / scale, -_cost(e, top_cost)))
    return pick, f"cost_weight={lam:g}"


class UtilityPolicy:
    """Best expected quality minus λ·cost; λ from the request's dial.

    Usage::

        UtilityPolicy().decide(estimates, Dial(quality_target=0.9))
    """

    name = "utility"

    def decide(self, estimates: Sequence[Estimate], dial: Dial) -> RouteDecision:
        pick, how = utility_choice(estimates, dial)
        best = max(estimates, key=lambda e: e.quality)
        reason = f"utility {how}: {_fmt(pick)}; best {_fmt(best)}{prior_note(estimates)}"
        return RouteDecision(
            model=pick.name,
            policy=self.name,
            reason=reason,
            predicted_quality=pick.quality,
            predicted_cost_usd=pick.cost_usd,
            steps=(pick.name,),
        )


def cascade_plan(estimates: Sequence[Estimate], dial: Dial) -> tuple[Estimate, Estimate | None, Estimate]:
    """(first, checker, top): the dial's cheap pick, a second cheap model whose agreement accepts
    the first answer, and the best expected model to escalate to. The checker is the best-value
    other candidate no dearer than the top one; ``None`` when there is no such candidate."""
    first, _ = utility_choice(estimates, dial)
    top = max(estimates, key=lambda e: (e.quality, -_cost(e, 0.0)))
    top_cost = _cost(top, float("inf"))
    others = [e for e in estimates if e.name not in (first.name, top.name) and _cost(e, top_cost) < top_cost]
    checker = max(
        others,
        key=lambda e: e.quality - dial.cost_weight * _cost(e, top_cost) / max(top_cost, 1e-12),
        default=None,
    )
    return first, checker, top


WRONG_AGREE = 1.0  # chance that two wrong answers agree: 1 on a two-way choice, the least favourable case


def check_pays(first: Estimate, checker: Estimate, top: Estimate, dial: Dial, *, c_max: float) -> bool:
    """Whether calling the checker is worth its cost under the dial's λ, from predicted qualities.

    With p1, p2 the first's and checker's predicted qualities and errors independent, the answers
    disagree with probability d = 1 − p1·p2 − (1 − p1)(1 − p2)·WRONG_AGREE, and the first is right on
    a disagreement with probability p1(1 − p2)/d. The check escalates on disagreement, gaining
    d·(q_top − λ·c_top/c_max) − p1(1 − p2) over accepting the first answer unchecked; it pays when
    that exceeds λ·c_checker/c_max (c_max: the dearest candidate's cost, as in the utility choice).
    Where escalating is dear (large λ) or the first model is already near the top, this is false and
    the cascade accepts the first answer without a second call."""
    scale = c_max if c_max > 0 else 1.0
    p1, p2 = first.quality, checker.quality
    disagree = 1.0 - p1 * p2 - (1.0 - p1) * (1.0 - p2) * WRONG_AGREE
    escalated = top.quality - dial.cost_weight * _cost(top, scale) / scale
    gain = disagree * escalated - p1 * (1.0 - p2)
    return gain > dial.cost_weight * _cost(checker, scale) / scale


class CascadePolicy:
    """A cheap model first, checked (agreement of a second cheap answer, log-probability, format),
    escalating to the best expected model when the check fails. ``decide`` gives the plan; the
    calls are made by :func:`wattwise.routing.execute.run_cascade`.

    Usage::

        CascadePolicy().decide(estimates, Dial()).steps   # ("small", "medium", "large")
    """

    name = "cascade"

    def decide(self, estimates: Sequence[Estimate], dial: Dial) -> RouteDecision:
        first, checker, top = cascade_plan(estimates, dial)
        skipped = ""
        if checker is not None and first.name != top.name and not check_pays(
            first, checker, top, dial, c_max=max((e.cost_usd for e in estimates if e.cost_usd is not None), default=0.0)
        ):
            checker, skipped = None, " (a check would not pay)"
        steps = tuple(dict.fromkeys([first.name] + ([checker.name] if checker else []) + [top.name]))
        reason = (
            f"cascade: start {_fmt(first)}, check {checker.name if checker else 'format/logprob'}{skipped}, "
            f"escalate to {top.name}{prior_note(estimates)}"
        )
        return RouteDecision(
            model=first.name,
            policy=self.name,
            reason=reason,
            predicted_quality=first.quality,
            predicted_cost_usd=first.cost_usd,
            steps=steps,
        )


def samples_for(quality: float, *, n_max: int = 5) -> int:
    """Samples for best-of-N from predicted difficulty: an easy prompt needs one."""
    if quality >= 0.85:
        return 1
    return min(n_max, 3 if quality >= 0.6 else 5)


class BestOfNPolicy:
    """N samples from the dial's model, then a majority vote (or a judge); N from difficulty.

    Usage::

        BestOfNPolicy().decide(estimates, Dial()).n     # 1, 3 or 5
    """

    name = "best_of_n"

    def decide(self, estimates: Sequence[Estimate], dial: Dial) -> RouteDecision:
        pick, how = utility_choice(estimates, dial)
        n = samples_for(pick.quality, n_max=int(dial.extras.get("n_max", 5)))
        cost = None if pick.cost_usd is None else pick.cost_usd * n
        reason = f"best_of_n {how}: {_fmt(pick)} x{n}{prior_note(estimates)}"
        return RouteDecision(
            model=pick.name,
            policy=self.name,
            reason=reason,
            predicted_quality=pick.quality,
            predicted_cost_usd=cost,
            steps=(pick.name,) * n,
            n=n,
        )


EFFORTS = (("low", 1024), ("medium", 4096), ("high", 16384))


class ReasoningPolicy:
    """Whether a prompt needs a reasoning model or mode, and its thinking budget.

    Difficulty is one minus the best expected quality among the non-reasoning candidates; under
    0.15 no reasoning is used, else ``low`` / ``medium`` / ``high`` effort at 0.15 / 0.35 / 0.6.

    Usage::

        ReasoningPolicy().decide(estimates, Dial()).reasoning_effort   # None, "low", ...
    """

    name = "reasoning"

    def decide(self, estimates: Sequence[Estimate], dial: Dial) -> RouteDecision:
        plain = [e for e in estimates if not e.reasoning] or list(estimates)
        thinkers = [e for e in estimates if e.reasoning]
        difficulty = 1.0 - max(e.quality for e in plain)
        level = sum(difficulty >= t for t in (0.15, 0.35, 0.6))
        if level == 0 or not thinkers:
            pick, how = utility_choice(plain, dial)
            effort = EFFORTS[level - 1] if level and pick.reasoning else None
        else:
            pick, how = utility_choice(thinkers, dial)
            effort = EFFORTS[level - 1]
        words = f"effort={effort[0]} budget={effort[1]}" if effort else "no reasoning"
        reason = f"reasoning {how}: difficulty={difficulty:.2f} {words}: {_fmt(pick)}{prior_note(estimates)}"
        return RouteDecision(
            model=pick.name,
            policy=self.name,
            reason=reason,
            predicted_quality=pick.quality,
            predicted_cost_usd=pick.cost_usd,
            steps=(pick.name,),
            reasoning_effort=effort[0] if effort else None,
            max_thinking_tokens=effort[1] if effort else None,
        )


POLICY_NAMES = ("utility", "cascade", "best_of_n", "reasoning")


def builtin_policies() -> dict[str, Policy]:
    """The registry of built-in policies, by name (a fresh dict each call: no module state)."""
    found: list[Policy] = [UtilityPolicy(), CascadePolicy(), BestOfNPolicy(), ReasoningPolicy()]
    return {p.name: p for p in found}


def check_dial(quality_target: float | None, max_cost_usd: float | None) -> None:
    """Raise ``InvalidRequest`` naming the field for a dial outside its range."""
    if quality_target is not None and not (0.0 < quality_target <= 1.0):
        raise InvalidRequest(
            f"quality_target must be in (0, 1], got {quality_target!r}", param="wattwise.quality_target"
        )
    if max_cost_usd is not None and not max_cost_usd >= 0.0:
        raise InvalidRequest(
            f"max_cost_usd must be >= 0, got {max_cost_usd!r}", param="wattwise.max_cost_usd"
        )
