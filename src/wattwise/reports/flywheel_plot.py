"""Quality and cost over a ``flywheel-sim`` stream, per window of prompts: the flywheel (labelling
spend stacked on its serving cost), the static prior router, the best single model and the oracle,
with the labels bought so far on a second axis.

Usage::

    plot_flysim(report, "flywheel-sim.png")     # report: the dict ``flywheel-sim --json`` prints
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_flysim(report: dict[str, Any], path: str | Path) -> None:
    """Write the plot to ``path`` (format from its suffix: .png, .svg, .pdf)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never opens a window
    import matplotlib.pyplot as plt

    points = report["curve"]
    x = [p["end"] for p in points]
    n = [p["prompts"] for p in points]
    target = report["config"]["quality_target"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True)
    try:
        top.plot(x, [p["quality"] for p in points], "o-", color="tab:green", label="flywheel (adapt + retrain)")
        top.plot(x, [p["static_quality"] for p in points], "s--", color="tab:grey", label="static prior router")
        top.plot(x, [p["best_single_quality"] for p in points], "-", color="tab:blue",
                 label=f"best single ({report['best_single_model'].split('/')[-1]})")
        top.plot(x, [target * p["best_single_quality"] for p in points], ":", color="tab:blue",
                 label=f"{target:.0%} of best single")
        top.plot(x, [p["oracle_quality"] for p in points], "-", color="gold", label="oracle")
        top.set_ylabel("quality (mean score per window)")
        top.grid(True, alpha=0.3)
        top.legend(fontsize=7, loc="lower center", ncol=3)
        serving = [p["cost_usd"] / k for p, k in zip(points, n, strict=True)]
        total = [(p["cost_usd"] + p["labelling_usd"]) / k for p, k in zip(points, n, strict=True)]
        bottom.plot(x, total, "o-", color="tab:red", label="flywheel: serving + labelling")
        bottom.plot(x, serving, "o-", color="tab:green", label="flywheel: serving")
        bottom.plot(x, [p["static_cost_usd"] / k for p, k in zip(points, n, strict=True)], "s--",
                    color="tab:grey", label="static prior router")
        bottom.plot(x, [p["best_single_cost_usd"] / k for p, k in zip(points, n, strict=True)], "-",
                    color="tab:blue", label="best single")
        bottom.plot(x, [p["oracle_cost_usd"] / k for p, k in zip(points, n, strict=True)], "-", color="gold",
                    label="oracle")
        bottom.set_yscale("log")
        bottom.set_ylabel("$ per prompt (log)")
        bottom.set_xlabel("prompts served")
        bottom.grid(True, which="both", alpha=0.3)
        labels = bottom.twinx()
        labels.plot(x, [p["labels_total"] for p in points], color="tab:purple", alpha=0.6)
        labels.set_ylabel("labels bought so far", color="tab:purple")
        bottom.legend(fontsize=8, loc="upper right")
        half = report["prompts"] // 2
        for ax in (top, bottom):
            ax.axvline(half, color="k", alpha=0.25)
        top.set_title(f"flywheel-sim: {Path(str(report.get('outcomes') or '')).name}")
        fig.tight_layout()
        fig.savefig(str(path), dpi=120)
    finally:
        plt.close(fig)
