"""``wattwise flywheel-sim``: replay an outcomes file as traffic through the flywheel (see ``flysim``).

Usage::

    $ wattwise flywheel-sim routerbench_zs.test.jsonl.gz --shipped routerbench_zs.train.jsonl.gz \\
        --shipped-task arc-challenge --quality-target 0.95 --json --plot flywheel-sim.png
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from wattwise.exceptions import WattwiseError

# numpy, scikit-learn, matplotlib and tqdm are imported inside the command: `wattwise --help` stays fast.


@click.command("flywheel-sim")
@click.argument("outcomes", type=click.Path(dir_okay=False))
@click.option("--router", "router_path", type=click.Path(dir_okay=False),
              help="the serving router at the start (default: trained on --shipped, else the shipped one)")
@click.option("--shipped", type=click.Path(dir_okay=False), help="outcomes the serving router was trained on")
@click.option("--shipped-task", multiple=True, help="keep only these tasks of --shipped (repeatable)")
@click.option("--quality-target", default=0.95, show_default=True, type=float,
              help="the stream's quality as a share of its best single model's")
@click.option("--judge-model", help="model priced as the judge (default: the file's best single model)")
@click.option("--judge-noise", default=0.0, show_default=True, type=float,
              help="probability that the judge flips a recorded score (s -> 1-s)")
@click.option("--judge-share", default=0.2, show_default=True, type=float, help="share of answers judged")
@click.option("--shadow-share", default=0.5, show_default=True, type=float, help="share of prompts shadowed")
@click.option("--shadow-models", help="comma-separated models to shadow (default: every other model)")
@click.option("--label-usd-per-day", default=3.0, show_default=True, type=float, help="labelling budget")
@click.option("--days", default=1.0, show_default=True, type=float, help="simulated days the stream spans")
@click.option("--retrain-every", default=400, show_default=True, type=int, help="new labels per retrain (0: never)")
@click.option("--holdout-share", default=0.2, show_default=True, type=float)
@click.option("--strength", default=5.0, show_default=True, type=float, help="the router prior's weight in labels")
@click.option("--pessimism", default=1.0, show_default=True, type=float,
              help="choose on the posterior mean less this many standard errors")
@click.option("--label-cap", default=40, show_default=True, type=int,
              help="labels per (app, model) before shadowing stops (0: no cap)")
@click.option("--judge-cap", default=150, show_default=True, type=int,
              help="labels per (app, model) before served answers stop being judged (0: no cap)")
@click.option("--precision", type=float,
              help="no more labels for an (app, model) whose mean's standard error is this small (default: off)")
@click.option("--no-adapt", is_flag=True, help="per-application adaptation off (retraining only)")
@click.option("--app-field", default="task", show_default=True, type=click.Choice(["task", "model"]),
              help="the outcomes field standing in for the application key")
@click.option("--policy", default="utility", show_default=True, type=click.Choice(["utility", "cascade"]),
              help="how the flywheel and static arms serve: one model, or a checked cascade")
@click.option("--window", default=50, show_default=True, type=int, help="prompts per curve point")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--plot", type=click.Path(dir_okay=False), help="write quality and cost over the stream (PNG/SVG)")
def flysim_command(outcomes: str, router_path: str | None, shipped: str | None, shipped_task: tuple[str, ...],
                   quality_target: float, judge_model: str | None, judge_noise: float, judge_share: float,
                   shadow_share: float, shadow_models: str | None, label_usd_per_day: float, days: float,
                   retrain_every: int, holdout_share: float, strength: float, pessimism: float, label_cap: int,
                   judge_cap: int, precision: float | None, no_adapt: bool, app_field: str, policy: str,
                   window: int, seed: int, as_json: bool, plot: str | None) -> None:
    """Replay OUTCOMES as a stream through routing, labelling, retraining and per-app adaptation."""
    from tqdm import tqdm

    from wattwise.outcomes import load_outcomes
    from wattwise.routing.evaluate import finite
    from wattwise.routing.flysim import SimConfig, simulate
    from wattwise.routing.router import Router
    from wattwise.routing.train import train_router

    try:
        config = SimConfig(
            quality_target=quality_target, judge_model=judge_model, judge_noise=judge_noise,
            judge_share=judge_share, shadow_share=shadow_share,
            shadow_models=tuple(m.strip() for m in shadow_models.split(",")) if shadow_models else None,
            budget_usd_per_day=label_usd_per_day, days=days, retrain_every=retrain_every,
            holdout_share=holdout_share, strength=strength, pessimism=pessimism, label_cap=label_cap or None,
            judge_cap=judge_cap or None, precision=precision, adapt=not no_adapt, app_field=app_field,
            policy=policy, window=window,
            seed=seed)
        rows = load_outcomes(outcomes)
        base = load_outcomes(shipped) if shipped else []
        if shipped_task:
            base = [r for r in base if r.task in shipped_task]
        router = Router.load(router_path) if router_path else train_router(base) if base else Router.default()
        total = len({r.prompt_id for r in rows})
        with tqdm(total=total, desc="flywheel-sim", file=sys.stderr, disable=None) as bar:
            report = finite(simulate(rows, router=router, shipped=base, config=config,
                                     progress=lambda n: _tick(bar, n)))
    except WattwiseError as exc:
        raise click.ClickException(str(exc)) from None
    report.update({"outcomes": outcomes, "router": router_path or ("trained on --shipped" if base else "shipped"),
                   "shipped": shipped, "shipped_tasks": list(shipped_task)})
    if plot:
        from wattwise.reports.flywheel_plot import plot_flysim

        plot_flysim(report, plot)
    click.echo(json.dumps(report) if as_json else render(report))


def _tick(bar: Any, n: int) -> None:
    bar.update(n)


def render(report: dict[str, Any]) -> str:
    """A human summary of a flywheel-sim report."""
    lines = [f"{'last half':<28} {'quality':>8} {'share':>6} {'cost $':>8} {'label $':>8} {'ratio':>6}"]
    h = report["last_half"]
    rows = [("flywheel (labels counted)", h["quality"], h["cost_usd"], h["labelling_usd"]),
            ("static prior router", h["static_quality"], h["static_cost_usd"], 0.0),
            (f"best single ({report['best_single_model'][:14]})", h["best_single_quality"],
             h["best_single_cost_usd"], 0.0),
            ("oracle", h["oracle_quality"], h["oracle_cost_usd"], 0.0)]
    best_q, best_c = h["best_single_quality"], h["best_single_cost_usd"]
    for name, q, c, lab in rows:
        lines.append(f"{name:<28} {q:>8.3f} {q / best_q:>6.3f} {c:>8.3f} {lab:>8.3f} {(c + lab) / best_c:>6.3f}")
    lab = report["labels"]
    lines.append(f"\nlabels: {lab['total']} ({lab['judge']} judge, {lab['shadow']} shadow), "
                 f"{lab['by_end_of_first_half']} by half-way; retrains: {len(report['retrains'])}, "
                 f"promoted: {sum(r['promoted'] for r in report['retrains'])}")
    return "\n".join(lines)
