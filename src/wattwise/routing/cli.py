"""``wattwise train`` and ``wattwise eval``: fit a router on outcomes; measure policies on outcomes.

Usage::

    $ wattwise train data/outcomes/routerbench_zs.train.jsonl.gz --out router.json
    $ wattwise eval routerbench_zs.train.jsonl.gz --test routerbench_zs.test.jsonl.gz --json
    $ wattwise eval routellm_gsm8k.jsonl.gz --folds 5 --plot gsm8k.png
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from wattwise.exceptions import WattwiseError
from wattwise.routing.policies import POLICY_NAMES as POLICIES

# numpy, scikit-learn and tqdm are imported inside the commands: `wattwise --help` stays fast.


def _fail(exc: WattwiseError) -> None:
    raise click.ClickException(str(exc)) from None


@click.command("train")
@click.argument("outcomes", nargs=-1, required=False, type=click.Path(dir_okay=False))
@click.option(
    "--out", "out", required=True, type=click.Path(dir_okay=False), help="router JSON file to write"
)
@click.option("--rank", default=0, show_default=True, help="latent skills in the joint quality model")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--store", "store_url", help="also train on this trace store's flywheel labels (judge, shadow, "
              "feedback) and compare with the router it serves, on the newest labels")
@click.option("--promote", is_flag=True, help="with --store: record the candidate there (promoted if it won)")
@click.option("--alias", "aliases", multiple=True, help="with --store: NAME=TRAINED_AS (a model's name in OUTCOMES)")
def train_command(outcomes: tuple[str, ...], out: str, rank: int, as_json: bool,
                  store_url: str | None = None, promote: bool = False, aliases: tuple[str, ...] = ()) -> None:
    """Train a router on OUTCOMES files and write it to --out (with --store: plus the store's labels)."""
    if store_url is not None:
        _train_from_store(store_url, outcomes=outcomes, out=out, promote=promote, aliases=aliases, as_json=as_json)
        return
    if not outcomes:
        raise click.UsageError("give OUTCOMES files, or --store")
    from tqdm import tqdm

    from wattwise.outcomes import load_outcomes
    from wattwise.routing.train import train_router

    try:
        rows = load_outcomes(*outcomes)
        models = sorted({r.model for r in rows})
        with tqdm(total=2, desc="train", file=sys.stderr, disable=None) as bar:
            router = train_router(rows, rank=rank, progress=lambda _: _tick(bar, 1))
        router.save(out)
    except WattwiseError as exc:
        _fail(exc)
    summary = {
        "out": out,
        "models": router.models(),
        "prompts": router.meta["prompts"],
        "rows": router.meta["rows"],
        "cost_weight": router.cost_weight,
        "version": router.version,
        "train_seconds": router.meta.get("train_seconds"),
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"wrote {out}: {len(models)} models, {summary['prompts']} prompts, "
            f"default cost_weight {router.cost_weight:g}"
        )


@click.command("eval")
@click.argument("train", type=click.Path(dir_okay=False))
@click.option("--test", "test", type=click.Path(dir_okay=False), help="outcomes file to evaluate on")
@click.option("--folds", type=int, help="K folds of TRAIN split by prompt_id (when there is no --test)")
@click.option(
    "--policy",
    default="utility",
    show_default=True,
    type=click.Choice([*POLICIES, "all"]),
    help="policy to evaluate, or all",
)
@click.option(
    "--extra",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="more outcomes files added to every fold's training data (never tested on)",
)
@click.option("--recorded-costs", is_flag=True, help="route on recorded costs instead of predicted ones")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--plot", type=click.Path(dir_okay=False), help="write a quality-against-cost plot (PNG/SVG)")
def eval_command(
    train: str,
    test: str | None,
    folds: int | None,
    policy: str,
    extra: tuple[str, ...],
    recorded_costs: bool,
    as_json: bool,
    plot: str | None,
) -> None:
    """Train on TRAIN (plus --extra) only, evaluate on --test (or --folds K), sweeping the dial."""
    if (test is None) == (folds is None):
        raise click.UsageError("give exactly one of --test or --folds")
    from tqdm import tqdm

    from wattwise.outcomes import load_outcomes
    from wattwise.routing.evaluate import finite, run_eval, split_folds

    policies = list(POLICIES) if policy == "all" else [policy]
    try:
        rows = load_outcomes(train)
        more = load_outcomes(*extra) if extra else []
        splits = [(rows, load_outcomes(test))] if test else split_folds(rows, folds or 0)
        splits = [([*tr, *more], te) for tr, te in splits]
        total = sum(len({r.prompt_id for r in part}) for _, part in splits)
        with tqdm(total=total, desc="eval", file=sys.stderr, disable=None) as bar:
            report = finite(
                run_eval(
                    splits,
                    policies=policies,
                    progress=lambda n: _tick(bar, n),
                    recorded_costs=recorded_costs,
                )
            )
    except WattwiseError as exc:
        _fail(exc)
    report.update({"train": train, "test": test, "extra": list(extra)})
    if plot:
        from wattwise.reports.routing_plot import plot_report

        plot_report(report, plot)
    click.echo(json.dumps(report) if as_json else render(report))


def _tick(bar: Any, n: int) -> None:
    bar.update(n)


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def render(report: dict[str, Any]) -> str:
    """A human table of an eval report."""
    lines = [f"{'model':<40} {'quality':>8} {'cost $':>10}"]
    lines += [f"{s['model']:<40} {s['quality']:>8.3f} {s['cost_usd']:>10.4f}" for s in report["singles"]]
    o = report["oracle"]
    lines.append(f"{'oracle':<40} {o['quality']:>8.3f} {o['cost_usd']:>10.4f}")
    lines.append("")
    lines.append(f"{'policy':<12} {'max_q':>6} {'ratio@best':>10} {'ratio@95%':>9} {'AIQ':>6} {'APGR':>6}")
    for name, p in report["policies"].items():
        if p.get("applicable") is False:
            lines.append(f"{name:<12} not applicable: {p['why']}")
            continue
        lines.append(
            f"{name:<12} {p['max_quality']:>6.3f} "
            f"{_num(p['cost_ratio_at_best_single_quality'], '.3f'):>10} "
            f"{_num(p['cost_ratio_at_95pct'], '.3f'):>9} {_num(p['aiq'], '.3f'):>6} "
            f"{_num(p['apgr'], '.3f'):>6}"
        )
    c = report["calibration"]
    lines.append(f"\ncalibration: ECE {c['ece']:.4f}, log loss {c['log_loss']:.4f}, Brier {c['brier']:.4f}")
    return "\n".join(lines)


def _train_from_store(store_url: str, *, outcomes: tuple[str, ...], out: str, promote: bool,
                      aliases: tuple[str, ...], as_json: bool) -> None:
    """``train --store``: OUTCOMES (the shipped training set when none) plus the store's labels."""
    from wattwise.labeller import retrain_from_store

    if any("=" not in a for a in aliases):
        raise click.UsageError("--alias takes NAME=TRAINED_AS")
    try:
        summary = retrain_from_store(store_url, out=out, shipped=outcomes, promote=promote,
                                     aliases=dict(a.split("=", 1) for a in aliases))
    except WattwiseError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"wrote {out} ({summary['version']}) from {summary['labels']} labels: {summary['detail']}"
                   + ("; recorded in the store" if promote else ""))
