"""Usage reports over trace rows: requests, tokens, $, J, tokens/J, latency, a baseline's cost, and the
response cache's hits with the $ and J their answers had cost (saved).

Pure functions over :class:`TraceRecord` lists; the CLI fetches the rows.

Usage::

    rows = store.fetch(since=t0)
    table = summarize(rows, by="model", baseline=Price(input=10, output=30))   # or by "tag", "hour", "key", "team"
    print(format_table(table))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from wattwise.metering.pricing import Price, cost_usd
from wattwise.metering.usage import Usage
from wattwise.store.records import TraceRecord

KEYS: dict[str, Callable[[TraceRecord], str]] = {
    "model": lambda r: r.model or "(none)",
    "tag": lambda r: r.tag or "(untagged)",
    "hour": lambda r: time.strftime("%Y-%m-%d %H:00", time.gmtime(r.ts)),
    "key": lambda r: r.key_id or "(no key)",
    "team": lambda r: r.team or "(no team)",
}


@dataclass(kw_only=True)
class Line:
    group: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cost_unknown: int
    energy_j: float | None
    energy_unknown: int
    energy_measured: int
    tokens_per_joule: float | None
    latency_p50_s: float | None
    latency_p99_s: float | None
    quality: float | None
    baseline_cost_usd: float | None
    cache_hits: int = 0
    saved_usd: float = 0.0
    saved_j: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _usage(r: TraceRecord) -> Usage:
    return Usage(input_tokens=r.input_tokens or 0, cached_input_tokens=r.cached_input_tokens or 0,
                 output_tokens=r.output_tokens or 0, reasoning_tokens=r.reasoning_tokens or 0)


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize_group(group: str, rows: Sequence[TraceRecord], baseline: Price | None) -> Line:
    ok = [r for r in rows if r.status == "ok"]
    known_energy = [r for r in ok if r.energy_j is not None]
    energy = sum(r.energy_j or 0.0 for r in known_energy)
    tokens_known = sum((r.input_tokens or 0) + (r.output_tokens or 0) for r in known_energy)
    scores = [r.score for r in ok if r.score is not None]
    latencies = [r.latency_s for r in rows if r.latency_s is not None]
    return Line(
        group=group, requests=len(rows), errors=len(rows) - len(ok),
        input_tokens=sum(r.input_tokens or 0 for r in rows),
        output_tokens=sum(r.output_tokens or 0 for r in rows),
        cost_usd=sum(r.cost_usd or 0.0 for r in rows),
        cost_unknown=sum(1 for r in ok if r.cost_usd is None),
        energy_j=energy if known_energy else None, energy_unknown=len(ok) - len(known_energy),
        energy_measured=sum(1 for r in ok if r.energy_source == "measured"),
        tokens_per_joule=tokens_known / energy if energy > 0 else None,
        latency_p50_s=_pct(latencies, 50), latency_p99_s=_pct(latencies, 99),
        quality=sum(scores) / len(scores) if scores else None,
        baseline_cost_usd=sum(cost_usd(baseline, _usage(r)) for r in ok) if baseline else None,
        cache_hits=sum(1 for r in ok if r.cache == "hit"),
        saved_usd=sum(r.saved_usd or 0.0 for r in ok if r.cache == "hit"),
        saved_j=sum(r.saved_j or 0.0 for r in ok if r.cache == "hit"),
    )


def summarize(rows: Sequence[TraceRecord], *, by: str = "model", baseline: Price | None = None) -> list[Line]:
    """One line per group, then a ``TOTAL`` line."""
    key = KEYS[by]
    groups: dict[str, list[TraceRecord]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    lines = [summarize_group(name, members, baseline) for name, members in sorted(groups.items())]
    lines.append(summarize_group("TOTAL", rows, baseline))
    return lines


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


COLUMNS = [("group", "group"), ("requests", "req"), ("errors", "err"), ("input_tokens", "in tok"),
           ("output_tokens", "out tok"), ("cost_usd", "$"), ("energy_j", "J"),
           ("tokens_per_joule", "tok/J"), ("latency_p50_s", "p50 s"), ("latency_p99_s", "p99 s"),
           ("quality", "quality"), ("baseline_cost_usd", "baseline $"), ("cache_hits", "hits"),
           ("saved_usd", "saved $"), ("saved_j", "saved J")]


def format_table(lines: Sequence[Line]) -> str:
    """A plain-text table, columns aligned."""
    head = [title for _, title in COLUMNS]
    body = [[_fmt(getattr(line, name)) for name, _ in COLUMNS] for line in lines]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    render = [" ".join(cell.rjust(w) if i else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
              for row in [head, *body]]
    return "\n".join([render[0], "-" * len(render[0]), *render[1:]])


def plot_report(lines: Sequence[Line], path: str) -> None:
    """Spend and tokens per joule per group, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [line for line in lines if line.group != "TOTAL"]
    names = [line.group for line in groups]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, max(3.0, 0.4 * len(names) + 1.5)))
    ax1.barh(names, [line.cost_usd for line in groups], color="#4c72b0")
    ax1.set_xlabel("spend ($)")
    ax1.set_title("Spend by group")
    ax2.barh(names, [line.tokens_per_joule or 0.0 for line in groups], color="#55a868")
    ax2.set_xlabel("tokens per joule (0 = energy unknown)")
    ax2.set_title("Energy efficiency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
