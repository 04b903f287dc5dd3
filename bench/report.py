"""Turn the gateway benchmark's measurements into figures, target checks and a printed table.

:func:`render_table` takes what bench/gateway_overhead.py measured and returns both the JSON-ready
summary and the text table. Example::

    summary = render_table(results)
    print(summary["text"])
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

RATE_RATIO_TARGET = 10.0
ADDED_P50_TARGET_MS = 1.0
ACCESS_P50_TARGET_MS = 0.3
ADDED_P99_TARGET_MS = 3.0
MEMORY_TARGET_PCT = 5.0
BUSY_IDLE_PCT = 90.0
FOREIGN_CPU_PCT = 10.0
# "wattwise-nojournal": the same gateway with the write-ahead trace journal off, to show its cost;
# "wattwise-access" / "wattwise-redis": access control on (a key, budgets, rate limits), its state
# in the process / in Redis, to show access control's cost.
SYSTEMS = ("direct", "wattwise", "wattwise-nojournal", "wattwise-access", "wattwise-redis", "litellm")


def _ms(seconds: float) -> float | None:
    """Return seconds as milliseconds rounded to 0.01, None for NaN."""
    return None if math.isnan(seconds) else round(seconds * 1000, 2)


def leg_summary(leg: Any, direct: Any) -> dict[str, Any]:
    """Summarise one leg: peak rate, latency at the fixed rate and what it adds over direct calls."""
    out: dict[str, Any] = {
        "note": leg.note or None,
        "peak_rps": None,
        "peak_connections": None,
        "foreign_cpu_pct": leg.foreign_cpu_pct,
    }
    if leg.peak is not None:
        best = leg.peak.best
        out["peak_rps"] = round(leg.peak.rate, 1)
        out["peak_connections"] = best.connections if best else None
        out["wrk_runs"] = [{**asdict(run), "rate": round(run.rate, 1)} for run in leg.peak.runs]
    if leg.latency is not None:
        out.update(_latency_summary(leg.latency, direct.latency if direct else None))
    return out


def _latency_summary(run: Any, direct: Any) -> dict[str, Any]:
    """Summarise an open-loop run, with the added latency when a direct run is at hand."""
    out = {
        "offered_rps": run.rate,
        "achieved_rps": round(run.achieved_rate, 1),
        "requests": run.sent,
        "errors": run.errors,
        "kept_up": run.kept_up,
        "stopped_behind": run.aborted,
        "p50_ms": _ms(run.percentile(50)),
        "p99_ms": _ms(run.percentile(99)),
    }
    if direct is not None and run is not direct:
        out["added_p50_ms"] = _ms(run.percentile(50) - direct.percentile(50))
        out["added_p99_ms"] = _ms(run.percentile(99) - direct.percentile(99))
    return out


def memory_summary(memory: Any) -> dict[str, Any]:
    """Summarise the RSS samples: warm-up is the first sample after the first batch."""
    samples = [{"requests": n, "rss_mib": round(kib / 1024, 2)} for n, kib in memory.samples]
    out: dict[str, Any] = {
        "samples": samples,
        "errors": memory.errors,
        "every": memory.every,
        "foreign_cpu_pct": memory.foreign_cpu_pct,
    }
    if len(memory.samples) < 3:
        return out
    warm = memory.samples[1][1]
    after = [kib for _, kib in memory.samples[1:]]
    deviations = [100 * (kib - warm) / warm for kib in after]
    out.update(
        start_mib=samples[0]["rss_mib"],
        warm_mib=samples[1]["rss_mib"],
        warm_after_requests=memory.samples[1][0],
        final_mib=samples[-1]["rss_mib"],
        change_pct=round(deviations[-1], 2),
        max_deviation_pct=round(max(deviations, key=abs), 2),
    )
    return out


def _check(name: str, value: float | None, target: str, ok: bool | None) -> dict[str, Any]:
    """Return one target line (ok is None when the figure could not be measured)."""
    return {"target": name, "value": value, "goal": target, "pass": ok}


def target_checks(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Check the issue's targets against the measured figures."""
    ww, ll = summary.get("wattwise") or {}, summary.get("litellm") or {}
    ratio = summary.get("rate_ratio")
    p50, p99 = ww.get("added_p50_ms"), ww.get("added_p99_ms")
    dev = (summary.get("memory") or {}).get("max_deviation_pct")
    checks = [
        _check("wattwise peak rate ÷ LiteLLM peak rate", ratio, f"≥ {RATE_RATIO_TARGET:g}×",
               None if ratio is None else ratio >= RATE_RATIO_TARGET),
        _check("wattwise added p50 at 200 req/s (ms)", p50, f"≤ {ADDED_P50_TARGET_MS:g} ms",
               None if p50 is None else p50 <= ADDED_P50_TARGET_MS and ww.get("kept_up", False)),
        _check("wattwise added p99 at 200 req/s (ms)", p99, f"≤ {ADDED_P99_TARGET_MS:g} ms",
               None if p99 is None else p99 <= ADDED_P99_TARGET_MS and ww.get("kept_up", False)),
        _check("wattwise RSS max deviation after warm-up (%)", dev, f"within ±{MEMORY_TARGET_PCT:g}%",
               None if dev is None else abs(dev) <= MEMORY_TARGET_PCT),
    ]  # fmt: skip
    if not ll:
        checks[0]["pass"] = None
    return checks + access_checks(summary)


def access_checks(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Access control's cost: its legs' p50 over the plain wattwise leg's, and its rate against LiteLLM's."""
    ww, ll = summary.get("wattwise") or {}, summary.get("litellm") or {}
    checks = []
    for name, target in (("wattwise-access", True), ("wattwise-redis", False)):
        leg = summary.get(name) or {}
        if leg.get("p50_ms") is None or ww.get("p50_ms") is None:
            continue
        extra = round(leg["p50_ms"] - ww["p50_ms"], 2)
        goal = f"≤ {ACCESS_P50_TARGET_MS:g} ms" if target else "stated, no target"
        ok = extra <= ACCESS_P50_TARGET_MS and leg.get("kept_up", False) if target else None
        checks.append(_check(f"{name} p50 over wattwise at 200 req/s (ms)", extra, goal, ok))
        if leg.get("peak_rps") and ll.get("peak_rps"):
            ratio = round(leg["peak_rps"] / ll["peak_rps"], 1)
            checks.append(_check(f"{name} peak rate ÷ LiteLLM peak rate", ratio, f"≥ {RATE_RATIO_TARGET:g}×",
                                 ratio >= RATE_RATIO_TARGET))
    return checks


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Return the JSON-ready summary of a run."""
    direct = results.get("direct")
    summary: dict[str, Any] = {
        "mode": results["mode"],
        "machine": results["machine"],
        "plan": asdict(results["plan"]),
        "litellm_version": results.get("litellm_version"),
    }
    for name in SYSTEMS:
        if name in results:
            summary[name] = leg_summary(results[name], direct)
    if "memory" in results:
        summary["memory"] = memory_summary(results["memory"])
    ww_rate = (summary.get("wattwise") or {}).get("peak_rps")
    ll_rate = (summary.get("litellm") or {}).get("peak_rps")
    summary["rate_ratio"] = round(ww_rate / ll_rate, 1) if ww_rate and ll_rate else None
    summary["targets"] = target_checks(summary)
    return summary


def _fmt(value: Any, spec: str = ",.0f", none: str = "-") -> str:
    """Format a figure, or a dash when it is missing."""
    return none if value is None else format(value, spec)


def foreign_phases(summary: dict[str, Any]) -> dict[str, float]:
    """Return each measured phase's share of CPU used by other processes (%)."""
    phases = {}
    for name in SYSTEMS:
        for phase, pct in ((summary.get(name) or {}).get("foreign_cpu_pct") or {}).items():
            if pct is not None:
                phases[f"{name} {phase}"] = pct
    memory_pct = (summary.get("memory") or {}).get("foreign_cpu_pct")
    if memory_pct is not None:
        phases["wattwise memory"] = memory_pct
    return phases


def _busy_warning(summary: dict[str, Any]) -> list[str]:
    """Warn when other work used the CPUs before or during the run: its figures are then unreliable."""
    idle = summary["machine"].get("idle_pct_at_start")
    busy = {phase: pct for phase, pct in foreign_phases(summary).items() if pct > FOREIGN_CPU_PCT}
    lines = []
    if idle is not None and idle < BUSY_IDLE_PCT:
        lines.append(f"WARNING: the machine was busy before the run (CPU idle {idle:.0f}%)")
    if busy:
        listed = ", ".join(f"{phase} {pct:.0f}%" for phase, pct in busy.items())
        lines.append(f"WARNING: other processes used the CPUs during: {listed}")
    return [*lines, "figures are unreliable: run again on a quiet machine"] if lines else []


def system_rows(summary: dict[str, Any]) -> list[str]:
    """Return the main table: one row per system."""
    head = (
        f"{'system':<18}{'peak req/s':>11}{'conns':>7}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'added p50':>11}{'added p99':>11}{'errors':>8}{'other CPU':>11}"
    )
    rows = [head, "-" * len(head)]
    for name in SYSTEMS:
        leg = summary.get(name)
        if leg is None:
            continue
        label = f"litellm {summary['litellm_version']}" if name == "litellm" else name
        rows.append(
            f"{label:<18}{_fmt(leg['peak_rps']):>11}{_fmt(leg['peak_connections'], 'd'):>7}"
            f"{_fmt(leg.get('p50_ms'), '.2f'):>9}{_fmt(leg.get('p99_ms'), '.2f'):>9}"
            f"{_fmt(leg.get('added_p50_ms'), '+.2f'):>11}{_fmt(leg.get('added_p99_ms'), '+.2f'):>11}"
            f"{_fmt(leg.get('errors'), 'd'):>8}{_pct(_worst(leg['foreign_cpu_pct'])):>11}"
        )
        runs = ", ".join(
            f"{run['connections']}: {run['rate']:,.0f}/s" + (f" ({run['errors']} errors)" if run["errors"] else "")
            for run in leg.get("wrk_runs", [])
        )
        rows += [f"{'':<18}wrk rate by connections: {runs}"] if runs else []
        rows += [f"{'':<18}note: {leg['note']}"] if leg.get("note") else []
    return rows


def _pct(value: float | None) -> str:
    """Format a percentage, or a dash when it is missing."""
    return "-" if value is None else f"{value:.0f}%"


def _worst(phases: dict[str, float | None]) -> float | None:
    """Return the highest of a leg's per-phase figures, None when there is none."""
    values = [value for value in phases.values() if value is not None]
    return max(values) if values else None


def memory_rows(memory: dict[str, Any]) -> list[str]:
    """Return the memory table: RSS after each batch and its change from the warm-up reading."""
    if "warm_mib" not in memory:
        return ["memory: not enough samples"]
    warm = memory["warm_mib"]
    rows = [f"{'requests':>10}{'RSS MiB':>10}{'vs warm-up':>12}", "-" * 32]
    for sample in memory["samples"]:
        change = "" if sample["requests"] == 0 else f"{100 * (sample['rss_mib'] - warm) / warm:+.2f}%"
        rows.append(f"{sample['requests']:>10,}{sample['rss_mib']:>10.1f}{change:>12}".rstrip())
    rows.append(
        f"warm-up (after {memory['warm_after_requests']:,}): {warm:.1f} MiB;"
        f" final {memory['final_mib']:.1f} MiB"
        f" ({memory['change_pct']:+.2f}%); max deviation after warm-up {memory['max_deviation_pct']:+.2f}%;"
        f" request errors {memory['errors']}; other processes' CPU {_pct(memory['foreign_cpu_pct'])}"
    )
    return rows


def target_rows(summary: dict[str, Any]) -> list[str]:
    """Return one line per target with its figure and verdict."""
    words = {True: "PASS", False: "FAIL", None: "n/a"}
    rows = []
    if summary.get("rate_ratio") is not None:
        rows.append(f"ratio wattwise ÷ litellm peak rate: {summary['rate_ratio']:.1f}×")
    for check in summary["targets"]:
        value = _fmt(check["value"], ".2f", "n/a")
        rows.append(f"{words[check['pass']]:<5} {check['target']}: {value} (target {check['goal']})")
    return rows


def render_table(results: dict[str, Any]) -> dict[str, Any]:
    """Return ``{"json": summary, "text": table}`` for a run's results."""
    summary = summarise(results)
    machine = summary["machine"]
    text = [
        f"Gateway overhead ({summary['mode']} run): one mock upstream on loopback;"
        f" {machine['cpus']} CPU cores ({machine['cpu_model']}) shared by load generator and servers;"
        f" load average at start {' '.join(machine['loadavg_at_start'])},"
        f" CPU idle over 2 s before start {_fmt(machine['idle_pct_at_start'], '.0f', '?')}%",
        *_busy_warning(summary),
        "latency columns: open loop at 200 req/s; added = system minus direct at the same rate (ms);"
        " other CPU: share of the",
        "machine's CPU used by processes outside the benchmark during that system's worst phase",
        "",
        *system_rows(summary),
        "",
        *target_rows(summary),
    ]
    if "memory" in summary:
        text += [
            "",
            "wattwise resident memory (process tree VmRSS), fresh process:",
            *memory_rows(summary["memory"]),
        ]
    return {"json": summary, "text": "\n".join(text)}
