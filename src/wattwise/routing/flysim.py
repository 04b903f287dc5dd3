"""``wattwise flywheel-sim``: an outcomes file replayed as a stream of traffic through the flywheel.

Each prompt of the file arrives once, in a seeded order, spread over ``days`` of simulated time. The
serving router estimates every candidate, the per-application posterior (:mod:`routing.adapt`)
adjusts the estimates for the prompt's application, and a stream dial picks the model; the recorded
answer is served at its recorded cost. The flywheel's own code then runs on it: :class:`LabelPlan`
draws judge and shadow jobs, :class:`LabelBudget` caps their daily spend, :func:`run_job` runs them
against recorded answers (a shadow call costs the shadowed model's recorded cost; the judge is the
recorded score, optionally flipped with probability ``judge_noise``, at the judge model's price for
the rubric's tokens), labels feed the posterior, and :func:`retrain` trains and promotes a new router
every ``retrain_every`` labels. Beside it the static prior router (same dial, no labels), the best
single model and the oracle are scored on the same prompts.

Usage::

    result = simulate(load_outcomes("routerbench_zs.test.jsonl.gz"), router=Router.load("arc.json"),
                      shipped=arc_rows, config=SimConfig(quality_target=0.95))
    result["last_half"]["quality"], result["last_half"]["labelling_usd"]
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

from wattwise.exceptions import InvalidRequest, OutcomesError
from wattwise.outcomes import Outcome, by_prompt
from wattwise.routing.adapt import AppPosterior, StreamDial
from wattwise.routing.execute import Answer, cascade_calls
from wattwise.routing.flywheel import (
    DAY_S,
    DEFAULT_RUBRIC,
    AskResult,
    Judge,
    LabelBudget,
    LabelConfig,
    LabelJob,
    LabelPlan,
    LabelRow,
    retrain,
    run_job,
)
from wattwise.routing.policies import WRONG_AGREE, Candidate, Estimate, RouteDecision
from wattwise.routing.predictors import fit_prices
from wattwise.routing.router import Router

Progress = Callable[[int], None]
Train = Callable[[Sequence[Outcome]], Router]
JUDGE_OUT_TOKENS = 6  # "Score: N/10"


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """The knobs of one simulated run (see the module docstring).

    Usage::

        SimConfig(quality_target=0.95, judge_share=0.2, shadow_share=0.05, budget_usd_per_day=0.5)
    """

    quality_target: float = 0.95
    judge_model: str | None = None  # None: the file's best single model
    judge_noise: float = 0.0
    judge_share: float = 0.2
    shadow_share: float = 0.5
    shadow_models: tuple[str, ...] | None = None
    budget_usd_per_day: float = 3.0
    days: float = 1.0
    retrain_every: int = 400
    holdout_share: float = 0.2
    strength: float = 5.0
    pessimism: float = 1.0  # z: the posterior's lower bound steers the choice (see AppPosterior)
    label_cap: int | None = 40  # labels per (application, model) after which it is not shadowed
    judge_cap: int | None = 150  # ... after which its served answers are not judged either
    precision: float | None = None  # no label for a cell whose mean's standard error is already this small
    adapt: bool = True
    mean_reference: bool = True  # the dial's target is τ × the best model's posterior mean (not its bound)
    feedback: bool = True  # the dial corrects its estimates with the served answers' judged scores
    dial_gain: float = 0.5  # StreamDial: λ's response to the summed quality gap ...
    dial_memory: float = 200.0  # ... and that sum's half-life in requests
    app_field: str = "task"  # the outcomes field standing in for the application key
    policy: str = "utility"  # or "cascade": first pick, a checker's agreement accepts it, else the top model
    window: int = 50
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class Step:
    """What happened to one prompt of the stream."""

    index: int
    app: str
    model: str
    score: float
    expected: float  # the flywheel's expected quality of its pick
    cost_usd: float
    labelling_usd: float  # judge and shadow calls
    shadow_usd: float  # the shadow calls' part of it
    labels: int  # labels so far, this one's included
    static_score: float
    static_cost_usd: float
    best_score: float
    best_cost_usd: float
    oracle_score: float
    oracle_cost_usd: float
    cost_weight: float


class Replay:
    """The file's recorded answers as the flywheel's ``ask``, and the judge's price."""

    def __init__(self, table: dict[str, dict[str, Outcome]], *, judge_model: str, noise: float, seed: int) -> None:
        self.table = table
        rows = [per[judge_model] for per in table.values() if judge_model in per]
        if not rows:
            raise InvalidRequest(f"judge model {judge_model!r} has no outcomes in the file", param="judge_model")
        self.judge_in, self.judge_out = fit_prices(rows)
        self.judge_model = judge_model
        self.noise = noise
        self.rng = random.Random(seed)

    def judge_cost(self, prompt: str, answer: str) -> float:
        n_in = -(-len(DEFAULT_RUBRIC.replace("{prompt}", prompt).replace("{answer}", answer)) // 4)
        return n_in * self.judge_in + JUDGE_OUT_TOKENS * self.judge_out

    def ask_for(self, pid: str, job: LabelJob) -> Callable[[str, str], Any]:
        """``ask`` for one job: the shadow call answers from the file, the judge from the recorded score."""
        row = self.table[pid][job.model]

        async def ask(model: str, prompt: str) -> AskResult:
            if prompt == job.prompt and model == job.model:
                return AskResult(text=row.response or "", cost_usd=row.cost_usd or 0.0)
            score = 1.0 - row.score if self.rng.random() < self.noise else row.score
            cost = self.judge_cost(job.prompt, row.response or "")
            return AskResult(text=f"Score: {round(score * 10)}/10", cost_usd=cost)

        return ask

    def job_cost(self, pid: str, job: LabelJob) -> tuple[float, float]:
        """``(shadow call, judge call)`` dollars of one job."""
        row = self.table[pid][job.model]
        shadow = (row.cost_usd or 0.0) if job.kind == "shadow" else 0.0
        return shadow, self.judge_cost(job.prompt, row.response or "")


def candidates_of(table: dict[str, dict[str, Outcome]]) -> list[Candidate]:
    """One candidate per model of the file, priced from its recorded costs (as ``eval`` does)."""
    grouped: dict[str, list[Outcome]] = {}
    for per in table.values():
        for m, row in per.items():
            grouped.setdefault(m, []).append(row)
    out = []
    for model, rows in sorted(grouped.items()):
        p_in, p_out = fit_prices(rows)
        out.append(Candidate(name=model, input_usd_per_mtok=p_in * 1e6, output_usd_per_mtok=p_out * 1e6))
    return out


def _best_single(table: dict[str, dict[str, Outcome]], pids: Sequence[str]) -> str:
    models = sorted({m for pid in pids for m in table[pid]})
    return max(models, key=lambda m: (np.mean([table[p][m].score for p in pids if m in table[p]]),
                                      -sum(table[p][m].cost_usd or 0.0 for p in pids if m in table[p])))


class Arm:
    """One routing arm of the simulation: a router, a dial and (for the flywheel arm) a posterior."""

    def __init__(self, *, router: Router, dial: StreamDial, posterior: AppPosterior | None,
                 mean_reference: bool = True, policy: str = "utility") -> None:
        self.mean_reference = mean_reference  # the dial's best-model quality: posterior mean, not bound
        self.router = router
        self.dial = dial
        self.posterior = posterior
        self.policy = policy

    def pick(self, prompt: str, app: str, candidates: Sequence[Candidate]) -> tuple[RouteDecision, float]:
        """The decision for the prompt and its expected quality (for a cascade: of the plan's outcome)."""
        estimates = reference = self.router.estimate(prompt, candidates)
        if self.posterior is not None:
            reference = self.posterior.adjust(app, estimates, pessimism=0.0 if self.mean_reference else None)
            estimates = self.posterior.adjust(app, estimates)
        decision = self.router.decide(estimates, policy=self.policy, cost_weight=self.dial.cost_weight)
        expected = plan_quality(decision, estimates)
        self.dial.update(estimates, decision.model, reference=reference, expected=expected)
        return decision, expected


def plan_quality(decision: RouteDecision, estimates: Sequence[Estimate]) -> float:
    """Expected quality of a decision: the picked model's estimate, or for a checked cascade
    (first, checker, top) p1·p2 + P(disagree)·q_top, errors independent and wrong answers agreeing
    with probability ``WRONG_AGREE`` (as :func:`~wattwise.routing.policies.check_pays` assumes)."""
    q = {e.name: e.quality for e in estimates}
    steps = decision.steps or (decision.model,)
    if len(steps) < 3:
        return q[decision.model]
    p1, p2, top = q[steps[0]], q[steps[1]], q[steps[-1]]
    disagree = 1.0 - p1 * p2 - (1.0 - p1) * (1.0 - p2) * WRONG_AGREE
    return p1 * p2 + disagree * top


async def serve(decision: RouteDecision, per: dict[str, Outcome]) -> tuple[str, float, frozenset[str]]:
    """The model whose recorded answer is served, the summed cost of every call the plan made and the
    models it called (their answers are in hand: shadowing one of them costs only its judgement)."""
    if len(decision.steps) <= 1:
        return decision.model, per[decision.model].cost_usd or 0.0, frozenset((decision.model,))

    async def call(model: str) -> Answer:
        row = per[model]
        return Answer(text=row.response or "", cost_usd=row.cost_usd or 0.0)

    result = await cascade_calls(decision, call)
    return (result.model, sum(c.answer.cost_usd or 0.0 for c in result.calls),
            frozenset(c.model for c in result.calls))


def simulate(
    rows: Sequence[Outcome],
    *,
    router: Router,
    shipped: Sequence[Outcome],
    config: SimConfig,
    progress: Progress | None = None,
    train: Train | None = None,
) -> dict[str, Any]:
    """Run the stream; the report that ``flywheel-sim --json`` prints."""
    return asyncio.run(_simulate(rows, router=router, shipped=shipped, config=config, progress=progress,
                                 train=train))


async def _simulate(rows: Sequence[Outcome], *, router: Router, shipped: Sequence[Outcome], config: SimConfig,
                    progress: Progress | None, train: Train | None) -> dict[str, Any]:
    table = by_prompt(rows)
    if len(table) < 2:
        raise OutcomesError("flywheel-sim needs at least two prompts", path="<outcomes>")
    order = sorted(table)
    random.Random(config.seed).shuffle(order)
    candidates = candidates_of(table)
    names = [c.name for c in candidates]
    order = [p for p in order if all(n in table[p] for n in names)]  # every model answered it
    best = _best_single(table, order)
    replay = Replay(table, judge_model=config.judge_model or best, noise=config.judge_noise, seed=config.seed)
    posterior = AppPosterior(strength=config.strength, pessimism=config.pessimism) if config.adapt else None
    dial = partial(StreamDial, target=config.quality_target, gain=config.dial_gain, memory=config.dial_memory)
    flywheel = Arm(router=router, dial=dial(), posterior=posterior, mean_reference=config.mean_reference,
                   policy=config.policy)
    static = Arm(router=router, dial=dial(), posterior=None, policy=config.policy)
    plan = LabelPlan(config=LabelConfig(judge_model=replay.judge_model, judge_share=config.judge_share,
                                        shadow_share=config.shadow_share, shadow_models=config.shadow_models,
                                        seed=config.seed))
    budget = LabelBudget(usd_per_day=config.budget_usd_per_day, j_per_day=float("inf"))
    judge = Judge(model=replay.judge_model)
    labels: list[LabelRow] = []
    retrains: list[dict[str, Any]] = []
    steps: list[Step] = []
    since_retrain = 0
    for i, pid in enumerate(order):
        per = table[pid]
        first = next(iter(per.values()))
        now = i / len(order) * config.days * DAY_S
        app = str(getattr(first, config.app_field))
        decision, expected = flywheel.pick(first.prompt, app, candidates)
        model, serving_usd, called = await serve(decision, per)
        costs = {m: row.cost_usd or 0.0 for m, row in per.items()}
        static_model, static_usd, _ = await serve(static.pick(first.prompt, app, candidates)[0], per)
        served = per[model]
        spent = shadow_usd = 0.0
        for job in plan.jobs(request_id=f"sim-{i}", prompt_id=pid, prompt=first.prompt, served_model=model,
                             answer=served.response or "", candidates=names, app=app,
                             cost_usd=serving_usd):
            if not _wanted(job, posterior, config, served_model=model, costs=costs):
                continue
            shadow_call, judge_call = replay.job_cost(pid, job)
            if job.model in called:
                shadow_call = 0.0  # the plan already paid for this answer
            usd = shadow_call + judge_call
            if not budget.allow(usd=usd, joules=0.0, now=now):
                continue
            budget.spend(usd=usd, joules=None, now=now)
            spent += usd
            shadow_usd += shadow_call
            for row in await run_job(job, ask=replay.ask_for(pid, job), judge=judge, now=partial(float, now)):
                labels.append(row)
                since_retrain += 1
                if config.feedback and row.source == "judge" and row.model == model:
                    flywheel.dial.observe(expected, row.score)
                if posterior is not None:
                    posterior.add(row)
        if config.retrain_every and since_retrain >= config.retrain_every:
            since_retrain = 0
            promotion = retrain(serving=flywheel.router, labels=labels, shipped=shipped,
                                holdout_share=config.holdout_share, train=train)
            retrains.append({"at": i + 1, "labels": len(labels), "promoted": promotion.promoted,
                             "serving_score": promotion.serving_score,
                             "candidate_score": promotion.candidate_score, "detail": promotion.detail})
            if promotion.promoted:
                flywheel.router = promotion.candidate
        oracle = min(per.values(), key=lambda r: (-r.score, r.cost_usd or 0.0))
        steps.append(Step(
            index=i, app=app, model=model, score=served.score, expected=expected,
            cost_usd=serving_usd, labelling_usd=spent, shadow_usd=shadow_usd, labels=len(labels),
            static_score=per[static_model].score, static_cost_usd=static_usd,
            best_score=per[best].score, best_cost_usd=per[best].cost_usd or 0.0, oracle_score=oracle.score,
            oracle_cost_usd=oracle.cost_usd or 0.0, cost_weight=flywheel.dial.cost_weight))
        if progress is not None:
            progress(1)
    return report(steps, config=config, best=best, judge_model=replay.judge_model, retrains=retrains,
                  labels=labels, posterior=posterior)


def _wanted(job: LabelJob, posterior: AppPosterior | None, config: SimConfig, *, served_model: str,
            costs: dict[str, float]) -> bool:
    """Whether a label job is still worth buying for the per-application posterior.

    A served answer is judged until its cell has ``judge_cap`` labels. A model is shadowed until it has
    ``label_cap``; after that (up to four times as many) only while it is no dearer than the served
    model and may still be as good (:meth:`AppPosterior.contender`), so an unlucky early estimate of
    a cheap model is not frozen. With ``precision``, a cell whose mean is already known to that
    standard error (at least 10 labels) gets no more labels of either kind.
    """
    if posterior is None or job.app is None:
        return True
    cell = posterior.cell(job.app, job.model)
    n = cell.n
    if config.precision is not None and cell.mean is not None and n >= 10 and \
            math.sqrt(max(cell.mean * (1.0 - cell.mean), 0.01) / n) <= config.precision:
        return False
    if job.kind != "shadow":
        return config.judge_cap is None or n < config.judge_cap
    if config.label_cap is None or n < config.label_cap:
        return True
    return (n < 4 * config.label_cap and costs[job.model] <= costs[served_model]
            and posterior.contender(job.app, job.model, against=served_model))


def _part(steps: Sequence[Step]) -> dict[str, Any]:
    """Quality and cost figures of a stretch of the stream."""
    best_q = float(np.mean([s.best_score for s in steps]))
    best_c = float(sum(s.best_cost_usd for s in steps))
    cost = float(sum(s.cost_usd for s in steps))
    labelling = float(sum(s.labelling_usd for s in steps))
    quality = float(np.mean([s.score for s in steps]))
    static_q = float(np.mean([s.static_score for s in steps]))
    static_c = float(sum(s.static_cost_usd for s in steps))
    return {
        "prompts": len(steps),
        "quality": quality,
        "expected_quality": float(np.mean([s.expected for s in steps])),
        "cost_usd": cost,
        "labelling_usd": labelling,
        "labelling_shadow_usd": float(sum(s.shadow_usd for s in steps)),
        "quality_share_of_best": quality / best_q if best_q > 0 else None,
        "cost_ratio": (cost + labelling) / best_c if best_c > 0 else None,
        "cost_ratio_serving_only": cost / best_c if best_c > 0 else None,
        "best_single_quality": best_q,
        "best_single_cost_usd": best_c,
        "static_quality": static_q,
        "static_cost_usd": static_c,
        "static_cost_ratio": static_c / best_c if best_c > 0 else None,
        "oracle_quality": float(np.mean([s.oracle_score for s in steps])),
        "oracle_cost_usd": float(sum(s.oracle_cost_usd for s in steps)),
        "labels": steps[-1].labels - (steps[0].labels if steps[0].index else 0),
    }


def _served(steps: Sequence[Step]) -> dict[str, dict[str, Any]]:
    """``{app: {model: {requests, quality, expected}}}``: who served what, how well, and how well the
    flywheel expected."""
    groups: dict[tuple[str, str], list[Step]] = {}
    for s in steps:
        groups.setdefault((s.app, s.model), []).append(s)
    out: dict[str, dict[str, Any]] = {}
    for (app, model), group in sorted(groups.items()):
        out.setdefault(app, {})[model] = {"requests": len(group),
                                          "quality": float(np.mean([s.score for s in group])),
                                          "expected": float(np.mean([s.expected for s in group]))}
    return out


def curve(steps: Sequence[Step], window: int) -> list[dict[str, Any]]:
    """Figures per consecutive window of ``window`` prompts."""
    out = []
    for start in range(0, len(steps), window):
        part = steps[start:start + window]
        figures = _part(part)
        figures.update({"end": part[-1].index + 1, "labels_total": part[-1].labels,
                        "cost_weight": part[-1].cost_weight})
        out.append(figures)
    return out


def report(steps: Sequence[Step], *, config: SimConfig, best: str, judge_model: str,
           retrains: list[dict[str, Any]], labels: Sequence[LabelRow],
           posterior: AppPosterior | None) -> dict[str, Any]:
    half = len(steps) // 2
    last = _part(steps[half:])
    target = config.quality_target
    met_q = last["quality_share_of_best"] is not None and last["quality_share_of_best"] >= target - 1e-12
    points = curve(steps, config.window)
    reached = next((p for p in points if p["quality_share_of_best"] is not None
                    and p["quality_share_of_best"] >= target - 1e-12), None)
    return {
        "prompts": len(steps),
        "best_single_model": best,
        "judge_model": judge_model,
        "config": asdict(config),
        "last_half": last,
        "first_half": _part(steps[:half]),
        "whole": _part(steps),
        "last_half_quality_target_met": bool(met_q),
        "labels": {
            "total": len(labels),
            "judge": sum(r.source == "judge" for r in labels),
            "shadow": sum(r.source == "shadow" for r in labels),
            "by_end_of_first_half": steps[half - 1].labels if half else 0,
            "first_window_at_target": None if reached is None else {"end": reached["end"],
                                                                    "labels": reached["labels_total"]},
        },
        "last_half_served": _served(steps[half:]),
        "retrains": retrains,
        "curve": points,
        "posterior": posterior.snapshot() if posterior is not None else {},
    }
