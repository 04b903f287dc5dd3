"""What a simulation run measured, and the figures ``wattwise simulate --json`` prints.

Definitions (also in ``docs/simulator.md``):

* ``utilization``: for each replica, the running sequences divided by its batch limit, averaged over
  the run's time; then averaged over replicas. A replica full to its batch limit all the time is 1.0;
  an idle one is 0.
* ``throughput_tok_s``: output tokens generated (interactive and batch) per second of the run.
* ``ttft_*``: time from arrival to first token; ``tpot_*``: time per output token after the first;
  both over interactive requests. ``slo_attainment``: share of interactive requests meeting both the
  fleet's ``ttft_s`` and ``tpot_s``.
* ``energy_j``: GPU energy of the whole fleet over the run, idle time included;
  ``tokens_per_joule`` = output tokens / ``energy_j``; ``usd_per_mtok`` = GPU rental over the run per
  million output tokens.
* ``prefill_share``: GPU time spent on prefill (prompts of interactive requests and batch jobs, and
  the recompute of evicted batch jobs) over the run's replica time; that time is taken from decoding.

Usage::

    result.summary()               # the JSON figures
    plot_utilization(result, "util.png")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wattwise.sim.fleet import Slo


@dataclass(kw_only=True)
class Result:
    """Raw measurements of one run."""

    requests: int
    duration_s: float
    ttft: list[float]
    tpot: list[float]
    tokens: int
    batch_tokens: int
    batch_jobs: int
    batch_done: int
    batch_on_time: int
    utilization: float
    energy_j: float
    usd: float
    slo: Slo
    samples: list[tuple[float, float, float]] = field(default_factory=list)
    evictions: int = 0
    prefill_share: float = 0.0
    profiles: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        ttft = np.asarray(self.ttft) if self.ttft else np.zeros(1)
        tpot = np.asarray(self.tpot) if self.tpot else np.zeros(1)
        tokens = self.tokens + self.batch_tokens
        met = float(np.mean((ttft <= self.slo.ttft_s) & (tpot <= self.slo.tpot_s))) if self.ttft else 0.0
        return {
            "requests": self.requests,
            "completed": len(self.ttft),
            "duration_s": round(self.duration_s, 3),
            "utilization": round(self.utilization, 4),
            "throughput_tok_s": round(tokens / self.duration_s, 2) if self.duration_s else 0.0,
            "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
            "tpot_p50_s": _pct(tpot, 50), "tpot_p99_s": _pct(tpot, 99),
            "slo_attainment": round(met, 4),
            "energy_j": round(self.energy_j, 1),
            "tokens_per_joule": round(tokens / self.energy_j, 4) if self.energy_j else 0.0,
            "usd_per_mtok": round(self.usd / (tokens / 1e6), 4) if tokens else None,
            "joules_per_mtok": round(self.energy_j / (tokens / 1e6), 1) if tokens else None,
            "usd": round(self.usd, 2),
            "output_tokens": tokens,
            "batch_jobs": self.batch_jobs,
            "batch_done": self.batch_done,
            "batch_done_before_deadline": self.batch_on_time,
            "batch_evictions": self.evictions,
            "prefill_share": round(self.prefill_share, 4),
            "profiles": self.profiles,
        }


def _pct(values: np.ndarray, q: float) -> float:
    return round(float(np.percentile(values, q)), 4)


def plot_utilization(results: dict[str, Result], path: str) -> None:
    """Utilisation (and fleet power) over the run, one line per labelled result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for label, result in results.items():
        if not result.samples:
            continue
        t, util, watts = (np.asarray(col) for col in zip(*result.samples, strict=True))
        top.plot(t / 3600.0, util, label=label)
        bottom.plot(t / 3600.0, watts / 1000.0, label=label)
    top.set_ylabel("utilisation (running / batch limit)")
    top.set_ylim(0, 1.05)
    top.legend()
    bottom.set_ylabel("fleet power (kW)")
    bottom.set_xlabel("hour of the trace")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
