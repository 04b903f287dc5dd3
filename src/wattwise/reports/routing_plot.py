"""Quality-against-cost plot of an ``eval`` report: single models as points, each policy's curve,
its convex hull, and the oracle.

Usage::

    plot_report(report, "routing.png")      # report: the dict ``wattwise eval --json`` prints
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_report(report: dict[str, Any], path: str | Path) -> None:
    """Write the plot to ``path`` (format from its suffix: .png, .svg, .pdf)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never opens a window
    import matplotlib.pyplot as plt

    from wattwise.routing.metrics import hull

    fig, ax = plt.subplots(figsize=(8, 5.5))
    try:
        for s in report["singles"]:
            ax.scatter(s["cost_usd"], s["quality"], color="grey", zorder=3)
            ax.annotate(
                s["model"].split("/")[-1][:22],
                (s["cost_usd"], s["quality"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        for name, pol in report["policies"].items():
            curve = pol.get("curve") or []
            if not curve:
                continue
            pts = sorted((p["cost_usd"], p["quality"]) for p in curve)
            line = ax.plot([c for c, _ in pts], [q for _, q in pts], ".", alpha=0.5, label=f"{name} settings")
            h = hull(pts)
            ax.plot(
                [c for c, _ in h], [q for _, q in h], "-", color=line[0].get_color(), label=f"{name} hull"
            )
        o = report["oracle"]
        ax.scatter(
            o["cost_usd"],
            o["quality"],
            marker="*",
            s=160,
            color="gold",
            edgecolor="k",
            label="oracle",
            zorder=4,
        )
        ax.set_xscale("log")
        ax.set_xlabel("total cost (USD, log scale)")
        ax.set_ylabel("quality (mean score)")
        ax.set_title(f"{Path(str(report.get('test') or report.get('train') or '')).name}: quality vs cost")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(str(path), dpi=120)
    finally:
        plt.close(fig)
