"""Evaluate routing policies on recorded outcomes: sweep the dial, draw quality against cost.

Quality is the mean score over the test prompts; cost is the sum of every call a policy made, at the
costs recorded in the file. Cascades replay the recorded responses; best-of-N needs several
responses of one model to one prompt and is reported as not applicable where a file has one.

Usage::

    report = evaluate_split(train_rows, test_rows, policy="utility")
    report["cost_ratio_at_95pct"], report["curve"][:3]
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from wattwise.exceptions import InvalidRequest, OutcomesError
from wattwise.outcomes import Outcome, by_prompt
from wattwise.routing import metrics
from wattwise.routing.execute import Answer, cascade_calls
from wattwise.routing.policies import POLICY_NAMES, Candidate, Estimate
from wattwise.routing.predictors import fit_prices
from wattwise.routing.router import Router
from wattwise.routing.train import train_router

COST_WEIGHTS = tuple([0.0] + [float(x) for x in np.geomspace(0.003, 30.0, 91)])
QUALITY_TARGETS = tuple(float(x) for x in np.linspace(0.5, 1.0, 26))
POLICIES = POLICY_NAMES
Progress = Callable[[int], None]


@dataclass
class Table:
    """Test outcomes as {prompt_id: {model: Outcome}} with the models' prices from the file."""

    rows: dict[str, dict[str, Outcome]]
    candidates: list[Candidate]
    repeated: bool  # some model answered some prompt more than once (samples for best-of-N)

    @classmethod
    def of(cls, outcomes: Sequence[Outcome]) -> Table:
        if not outcomes:
            raise OutcomesError("no outcomes to evaluate on", path="<test>")
        counts = Counter((r.prompt_id, r.model) for r in outcomes)
        grouped: dict[str, list[Outcome]] = {}
        for r in outcomes:
            grouped.setdefault(r.model, []).append(r)
        # The price list is config knowledge, not outcomes: recover it from the recorded costs.
        cands = []
        for model, rs in sorted(grouped.items()):
            p_in, p_out = fit_prices(rs)
            cands.append(
                Candidate(name=model, input_usd_per_mtok=p_in * 1e6, output_usd_per_mtok=p_out * 1e6)
            )
        return cls(rows=by_prompt(outcomes), candidates=cands, repeated=max(counts.values()) > 1)


@dataclass
class Sweep:
    """Per setting, the per-prompt (score, cost, strong model called) of a policy."""

    results: dict[str, list[tuple[float, float, bool]]]

    def merge(self, other: Sweep) -> Sweep:
        keys = self.results.keys() & other.results.keys()
        return Sweep({k: self.results[k] + other.results[k] for k in keys})


def _cost(row: Outcome) -> float:
    return row.cost_usd or 0.0


def _strong(table: dict[str, dict[str, Outcome]]) -> str:
    quality: dict[str, float] = {}
    for per in table.values():
        for m, row in per.items():
            quality[m] = quality.get(m, 0.0) + row.score
    return max(sorted(quality), key=lambda m: quality[m])


def _settings() -> list[tuple[str, dict[str, float]]]:
    out = [(f"cost_weight={w:.4g}", {"cost_weight": w}) for w in COST_WEIGHTS]
    return out + [(f"quality_target={t:.3g}", {"quality_target": t}) for t in QUALITY_TARGETS]


def estimates_for(
    router: Router, table: Table, progress: Progress | None = None, *, recorded_costs: bool = False
) -> dict[str, list[Estimate]]:
    """The router's estimates for every test prompt; with ``recorded_costs`` each predicted cost is
    replaced by the call's recorded cost (routing with a perfect cost predictor, for comparison)."""
    found = {}
    for pid, per in table.rows.items():
        cands = [c for c in table.candidates if c.name in per]
        ests = router.estimate(next(iter(per.values())).prompt, cands)
        if recorded_costs:
            ests = [replace(e, cost_usd=_cost(per[e.name])) for e in ests]
        found[pid] = ests
        if progress is not None:
            progress(1)
    return found


def cost_accuracy(table: Table, ests: dict[str, list[Estimate]]) -> dict[str, float]:
    """How well predicted costs match recorded ones: median |log ratio| per call, and the ratio of
    totals (1.0 = unbiased in sum)."""
    pairs = [
        (e.cost_usd, _cost(table.rows[pid][e.name]))
        for pid, es in ests.items()
        for e in es
        if e.cost_usd is not None and e.cost_usd > 0 and _cost(table.rows[pid][e.name]) > 0
    ]
    if not pairs:
        return {"cost_median_abs_log_ratio": float("nan"), "cost_total_ratio": float("nan"), "cost_pairs": 0}
    logs = np.abs(np.log([p / r for p, r in pairs]))
    return {
        "cost_median_abs_log_ratio": float(np.median(logs)),
        "cost_total_ratio": float(sum(p for p, _ in pairs) / sum(r for _, r in pairs)),
        "cost_pairs": len(pairs),
    }


def sweep_single(router: Router, table: Table, ests: dict[str, list[Estimate]], policy: str) -> Sweep:
    """Single-call policies: each prompt's decision names one model; score and cost are recorded."""
    strong = _strong(table.rows)
    results: dict[str, list[tuple[float, float, bool]]] = {}
    for label, kw in _settings():
        got = []
        for pid, per in table.rows.items():
            model = router.decide(ests[pid], policy=policy, **kw).model
            got.append((per[model].score, _cost(per[model]), model == strong))
        results[label] = got
    return Sweep(results)


def sweep_cascade(router: Router, table: Table, ests: dict[str, list[Estimate]]) -> Sweep:
    """Cascades replayed from recorded responses: every call made is paid at its recorded cost."""
    strong = _strong(table.rows)

    async def one(
        per: dict[str, Outcome], est: list[Estimate], kw: dict[str, float]
    ) -> tuple[float, float, bool]:
        decision = router.decide(est, policy="cascade", **kw)

        async def call(model: str) -> Answer:
            row = per[model]
            return Answer(text=row.response or "", cost_usd=_cost(row))

        result = await cascade_calls(decision, call)
        called = {c.model for c in result.calls}
        return per[result.model].score, result.cost_usd or 0.0, strong in called

    async def run_all() -> dict[str, list[tuple[float, float, bool]]]:
        return {
            label: [await one(per, ests[pid], kw) for pid, per in table.rows.items()]
            for label, kw in _settings()
            if "cost_weight" in kw
        }

    return Sweep(asyncio.run(run_all()))


def singles(table: dict[str, dict[str, Outcome]]) -> list[dict[str, Any]]:
    models = sorted({m for per in table.values() for m in per})
    out = []
    for m in models:
        rows = [per[m] for per in table.values() if m in per]
        out.append(
            {
                "model": m,
                "quality": float(np.mean([r.score for r in rows])),
                "cost_usd": float(sum(_cost(r) for r in rows)),
                "prompts": len(rows),
            }
        )
    return out


def oracle(table: dict[str, dict[str, Outcome]]) -> dict[str, float]:
    """The cheapest model with the best score on each prompt."""
    picks = [min(per.values(), key=lambda r: (-r.score, _cost(r))) for per in table.values()]
    return {
        "quality": float(np.mean([r.score for r in picks])),
        "cost_usd": float(sum(_cost(r) for r in picks)),
    }


def calibration_pairs(table: Table, ests: dict[str, list[Estimate]]) -> list[tuple[float, float]]:
    """(predicted quality, recorded score) for every candidate of every test prompt."""
    return [(e.quality, table.rows[pid][e.name].score) for pid, es in ests.items() for e in es]


def calibration(pairs: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Expected calibration error (10 equal-width bins), log loss and Brier score of the quality
    predictions, over all held-out pairs together (folds pooled: each prompt counted once)."""
    p = np.clip(np.array([q for q, _ in pairs]), 1e-4, 1 - 1e-4)
    y = np.array([s for _, s in pairs])
    bins = np.minimum((p * 10).astype(int), 9)
    ece = sum(
        abs(y[bins == b].mean() - p[bins == b].mean()) * (bins == b).sum()
        for b in range(10)
        if (bins == b).any()
    ) / len(p)
    return {
        "ece": float(ece),
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        "brier": float(np.mean((p - y) ** 2)),
        "pairs": len(p),
    }


def summarise(sweep: Sweep, table: dict[str, dict[str, Outcome]]) -> dict[str, Any]:
    """The figures of one policy's sweep against the single models and the oracle."""
    single = singles(table)
    best = max(single, key=lambda s: (s["quality"], -s["cost_usd"]))
    cheap = min(single, key=lambda s: (s["cost_usd"], -s["quality"]))
    curve: list[dict[str, Any]] = [
        {
            "quality": float(np.mean([s for s, _, _ in r])),
            "cost_usd": float(sum(c for _, c, _ in r)),
            "strong_call_share": float(np.mean([k for _, _, k in r])),
            "setting": label,
        }
        for label, r in sweep.results.items()
    ]
    pts = [(float(p["cost_usd"]), float(p["quality"])) for p in curve]
    call_pts = [(float(p["strong_call_share"]), float(p["quality"])) for p in curve]
    ends = {"q_weak": cheap["quality"], "q_strong": best["quality"]}
    at_best = metrics.cost_to_reach(pts, best["quality"])
    at_95 = metrics.cost_to_reach(pts, 0.95 * best["quality"])
    return {
        "best_single": {k: best[k] for k in ("model", "quality", "cost_usd")},
        "cheapest_single": {k: cheap[k] for k in ("model", "quality", "cost_usd")},
        "singles": single,
        "oracle": oracle(table),
        "curve": curve,
        "max_quality": max(q for _, q in pts),
        "cost_ratio_at_best_single_quality": None if at_best is None else at_best / best["cost_usd"],
        "cost_ratio_at_95pct": None if at_95 is None else at_95 / best["cost_usd"],
        "aiq": metrics.aiq(pts, c_min=cheap["cost_usd"], c_max=best["cost_usd"]),
        "apgr": metrics.apgr(pts, x_weak=cheap["cost_usd"], x_strong=best["cost_usd"], **ends),
        "apgr_calls": metrics.apgr(call_pts, x_weak=0.0, x_strong=1.0, **ends),
        "cpt50_calls": metrics.cpt(call_pts, x_weak=0.0, x_strong=1.0, share=0.5, **ends),
        "cpt80_calls": metrics.cpt(call_pts, x_weak=0.0, x_strong=1.0, share=0.8, **ends),
    }


def not_applicable(policy: str, table: Table) -> str | None:
    """Why a policy cannot be evaluated from this file, or None when it can."""
    if policy == "best_of_n" and not table.repeated:
        return "needs several recorded responses of one model to one prompt; the file has one"
    if policy == "reasoning":
        return "needs outcomes recorded at several reasoning efforts; the file has none"
    if policy == "cascade" and not any(r.response for per in table.rows.values() for r in per.values()):
        return "needs recorded responses; the file has none"
    return None


def sweep_policy(router: Router, table: Table, ests: dict[str, list[Estimate]], policy: str) -> Sweep | None:
    if not_applicable(policy, table):
        return None
    if policy == "cascade":
        return sweep_cascade(router, table, ests)
    if policy == "best_of_n":
        return sweep_single(router, table, ests, "utility")  # repeated samples: scored as the chosen model
    return sweep_single(router, table, ests, policy)


def run_eval(
    folds: Sequence[tuple[Sequence[Outcome], Sequence[Outcome]]],
    *,
    policies: Sequence[str],
    progress: Progress | None = None,
    trainer: Callable[[Sequence[Outcome]], Router] | None = None,
    recorded_costs: bool = False,
) -> dict[str, Any]:
    """Train on each fold's first part, evaluate on its second; sweeps pooled over folds.

    ``recorded_costs``: route on each call's recorded cost instead of the predicted one (measures
    what the cost predictor loses)."""
    if trainer is None:
        from wattwise.routing.embed import Embedder

        trainer = partial(train_router, embedder=Embedder.load(memo=True))
    for p in policies:
        if p not in POLICIES:
            raise InvalidRequest(f"unknown policy '{p}'; known: {', '.join(POLICIES)}", param="policy")
    pooled: dict[str, Sweep | None] = {}
    whole: dict[str, dict[str, Outcome]] = {}
    calib: list[tuple[float, float]] = []
    costs: list[dict[str, float]] = []
    reasons: dict[str, str] = {}
    for train_rows, test_rows in folds:
        router = trainer(train_rows)
        table = Table.of(test_rows)
        whole.update(table.rows)
        ests = estimates_for(router, table, progress, recorded_costs=recorded_costs)
        calib.extend(calibration_pairs(table, ests))
        costs.append(cost_accuracy(table, estimates_for(router, table) if recorded_costs else ests))
        for p in policies:
            reasons[p] = not_applicable(p, table) or ""
            got = sweep_policy(router, table, ests, p)
            prev = pooled.get(p)
            pooled[p] = got if p not in pooled else (None if prev is None or got is None else prev.merge(got))
    report: dict[str, Any] = {
        "prompts": len(whole),
        "folds": len(folds),
        "calibration": calibration(calib),
        "cost_prediction": _pool_costs(costs),
        "routed_on": "recorded costs" if recorded_costs else "predicted costs",
    }
    report["policies"] = {
        p: summarise(s, whole) if s is not None else {"applicable": False, "why": reasons[p]}
        for p, s in pooled.items()
    }
    head = next((report["policies"][p] for p in policies if pooled.get(p) is not None), None)
    if head is not None:
        report.update({k: v for k, v in head.items()})
    else:
        report.update({"best_single": None, "curve": [], "singles": singles(whole), "oracle": oracle(whole)})
    report["policy"] = policies[0] if len(policies) == 1 else "all"
    return report


def _pool_costs(parts: list[dict[str, float]]) -> dict[str, float]:
    parts = [p for p in parts if p["cost_pairs"]]
    total = sum(p["cost_pairs"] for p in parts)
    if not total:
        return {}
    return {
        k: float(sum(p[k] * p["cost_pairs"] for p in parts) / total)
        for k in ("cost_median_abs_log_ratio", "cost_total_ratio")
    }


def split_folds(rows: Sequence[Outcome], k: int) -> list[tuple[list[Outcome], list[Outcome]]]:
    """K folds by prompt_id (a stable hash, so every run splits alike)."""
    if k < 2:
        raise InvalidRequest("--folds must be at least 2", param="folds")
    fold_of = {pid: zlib.crc32(pid.encode()) % k for pid in {r.prompt_id for r in rows}}
    return [
        ([r for r in rows if fold_of[r.prompt_id] != i], [r for r in rows if fold_of[r.prompt_id] == i])
        for i in range(k)
    ]


def finite(obj: Any) -> Any:
    """NaN/inf become null so the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj
