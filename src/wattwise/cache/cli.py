"""``wattwise cache-eval``: hit and false-hit rates of the semantic cache on labelled pairs (see ``evaluate``).

Usage::

    $ wattwise cache-eval qqp_pairs.jsonl.gz --max-error 0.01 --json --plot cache-eval.png
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from wattwise.exceptions import WattwiseError

# numpy, matplotlib, tqdm and the embedder are imported inside the command: `wattwise --help` stays fast.


@click.command("cache-eval")
@click.argument("pairs", type=click.Path(dir_okay=False))
@click.option("--max-error", default=0.01, show_default=True, type=float,
              help="the false-hit rate the learned thresholds must stay under")
@click.option("--learn-share", default=0.3, show_default=True, type=float,
              help="share of the stream run as an unreported warm-up")
@click.option("--theta", default=0.4, show_default=True, type=float,
              help="cosine two content words need to count as counterparts")
@click.option("--one-class", is_flag=True, help="one threshold for all requests instead of one per class")
@click.option("--limit", type=int, help="use only the first N pairs")
@click.option("--seed", default=0, show_default=True, type=int, help="stream order and verification sampling")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--plot", type=click.Path(dir_okay=False), help="write the hit / false-hit curve (PNG/SVG)")
def cache_eval_command(pairs: str, max_error: float, learn_share: float, theta: float, one_class: bool,
                       limit: int | None, seed: int, as_json: bool, plot: str | None) -> None:
    """Replay PAIRS (JSON lines with a, b, same, kind) through the semantic cache and a cosine baseline."""
    from tqdm import tqdm

    from wattwise.cache.evaluate import evaluate, load_pairs
    from wattwise.cache.evaluate import plot as plot_result
    from wattwise.cache.semantic import Guard
    from wattwise.routing.embed import Embedder

    try:
        rows = load_pairs(pairs, limit)
        guard = Guard(Embedder.load(), theta=theta)
        with tqdm(total=len(rows), desc="cache-eval", file=sys.stderr, disable=None) as bar:
            result = evaluate(rows, guard=guard, max_error=max_error, learn_share=learn_share, seed=seed,
                              one_class=one_class, progress=bar.update)
    except (WattwiseError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if plot:
        plot_result(result, plot)
    report = result.to_dict() | {"pairs_file": pairs}
    click.echo(json.dumps(report) if as_json else render(report))


def render(report: dict[str, Any]) -> str:
    """A human summary of a cache-eval report."""
    b = report["baseline"]
    lines = [f"{report['pairs']} reported pairs after {report['learn_pairs']} warm-up; "
             f"max-error {report['max_error']:g}",
             f"{'':<22} {'hit rate':>9} {'false-hit':>10} {'adversarial':>12}",
             f"{'semantic cache':<22} {report['hit_rate']:>9.4f} {report['false_hit_rate']:>10.4f} "
             f"{report['adversarial_false_hit_rate']:>12.4f}",
             f"{'cosine >= ' + format(b['threshold'], '.4f'):<22} {b['hit_rate']:>9.4f} {b['false_hit_rate']:>10.4f} "
             f"{b['adversarial_false_hit_rate']:>12.4f}",
             f"served {report['counts']['served']} ({report['served_error']:.3f} of them labelled different), "
             f"verified {report['verified_share']:.3f} of lookups; thresholds {report['thresholds']}",
             "", f"{'max-error':>9} {'hit rate':>9} {'false-hit':>10} {'adversarial':>12}"]
    lines += [f"{p['max_error']:>9g} {p['hit_rate']:>9.4f} {p['false_hit_rate']:>10.4f} "
              f"{p['adversarial_false_hit_rate']:>12.4f}" for p in report["operating_points"]]
    lines += ["", f"{'check refuses':<14} {'same':>7} {'other':>7} {'advers.':>8}"]
    lines += [f"{k:<14} {v['same']:>7.3f} {v['other']:>7.3f} {v['adversarial']:>8.3f}"
              for k, v in report["checks"].items()]
    cost = report["lookup_us"]
    lines.append(f"\nlookup (vector + features + differs): p50 {cost['p50']:.0f} us, p95 {cost['p95']:.0f} us")
    return "\n".join(lines)
