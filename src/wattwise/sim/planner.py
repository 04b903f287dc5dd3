"""Fleet planning: which shape (GPU × GPUs per replica × batch limit × replicas) meets an SLO cheapest.

For each model, GPU and GPUs-per-replica (the shapes ML.ENERGY measured for the model, and the same
GPU counts on GPUs it did not measure, by roofline) and each batch limit, the planner finds the
fewest replicas whose simulation meets the SLO (starting from a throughput bound and adding replicas),
then ranks the shapes that met it by the objective, $ or J per million output tokens. Shapes whose
weights do not fit in the replica's memory (bf16 weights over 90% of it) are skipped.

Usage::

    rows = plan(trace=trace, models=["meta-llama/Llama-3.1-8B-Instruct"], gpus=["H100", "B200"],
                slo={"ttft_p99_s": 2.0}, objective="usd")
    rows[0]["usd_per_mtok"]
"""

from __future__ import annotations

import math
from typing import Any

from wattwise.exceptions import InvalidRequest
from wattwise.sim.engine import simulate
from wattwise.sim.fleet import Fleet, FleetModel, Slo
from wattwise.sim.profiles import GPUS, ProfileCatalog, gpu_named
from wattwise.sim.traces import Trace

SLO_KEYS = ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s")


def parse_slo(text: str) -> dict[str, float]:
    """``ttft_p99=2,tpot_p99=0.1`` → ``{"ttft_p99_s": 2.0, "tpot_p99_s": 0.1}``."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        key = key.strip() if key.strip().endswith("_s") else key.strip() + "_s"
        if key not in SLO_KEYS:
            raise InvalidRequest(f"unknown SLO {key!r} (known: {', '.join(SLO_KEYS)})", param="slo")
        try:
            out[key] = float(value)
        except ValueError:
            raise InvalidRequest(f"SLO {key} needs a number, got {value!r}", param="slo") from None
    if not out:
        raise InvalidRequest("give at least one SLO, e.g. ttft_p99=2", param="slo")
    return out


def shapes_for(catalog: ProfileCatalog, model: str, gpus: list[str]) -> list[tuple[str, int]]:
    """(GPU, count) pairs to try: measured shapes on the wanted GPUs, and their counts on the others."""
    measured = catalog.shapes(model)
    counts = sorted({n for _, n in measured}) or [1, 2, 4, 8]
    params = catalog.files.get(model, {}).get("total_params_billions") or 0.0
    out = []
    for name in gpus:
        spec = gpu_named(name)
        for n in counts:
            if params * 2.0 <= 0.9 * spec.memory_gb * n:
                out.append((spec.name, n))
    return out


def _fleet(model: str, gpu: str, gpus: int, limit: int, replicas: int, slo: Slo) -> Fleet:
    return Fleet(models={"m": FleetModel(profile=model, gpu=gpu, gpus_per_replica=gpus, replicas=replicas,
                                         batch_limit=limit)}, slo=slo)


def _meets(summary: dict[str, Any], slo: dict[str, float]) -> bool:
    return summary["completed"] == summary["requests"] and all(summary[k] <= v for k, v in slo.items())


def plan(*, trace: Trace, models: list[str], gpus: list[str], slo: dict[str, float], objective: str = "usd",
         batch_limits: tuple[int, ...] = (64, 128, 256, 512), catalog: ProfileCatalog | None = None,
         max_replicas: int = 64) -> list[dict[str, Any]]:
    """Every shape's cheapest SLO-meeting replica count, ranked by ``objective`` (``usd`` or ``joules``)."""
    if objective not in ("usd", "joules"):
        raise InvalidRequest("objective must be usd or joules", param="objective")
    catalog = catalog or ProfileCatalog.shipped()
    demand = float(trace.output_tokens.sum()) / max(trace.duration_s, 1.0)
    fleet_slo = Slo(ttft_s=slo.get("ttft_p99_s", 1e9), tpot_s=slo.get("tpot_p99_s", 1e9))
    rows = []
    for model in models:
        for gpu_name, count in shapes_for(catalog, model, gpus):
            profile = catalog.profile(model=model, gpu=gpu_name, gpus=count)
            for limit in batch_limits:
                capacity = limit / profile.step_s(limit)
                replicas = max(1, math.ceil(demand / capacity))
                while replicas <= max_replicas:
                    fleet = _fleet(model, gpu_name, count, limit, replicas, fleet_slo)
                    summary = simulate(fleet=fleet, trace=trace, profiles={"m": profile}).summary()
                    if _meets(summary, slo):
                        rows.append(_row(model, gpu_name, count, limit, replicas, profile.source, summary))
                        break
                    replicas = replicas + max(1, replicas // 4)
    key = "usd_per_mtok" if objective == "usd" else "joules_per_mtok"
    return sorted(rows, key=lambda r: r[key])


def _row(model: str, gpu: str, gpus: int, limit: int, replicas: int, source: str,
         summary: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "gpu": gpu, "gpus_per_replica": gpus, "batch_limit": limit, "replicas": replicas,
            "gpus_total": gpus * replicas, "profile": source, "usd_per_mtok": summary["usd_per_mtok"],
            "joules_per_mtok": summary["joules_per_mtok"], "tokens_per_joule": summary["tokens_per_joule"],
            "utilization": summary["utilization"], "ttft_p99_s": summary["ttft_p99_s"],
            "tpot_p99_s": summary["tpot_p99_s"], "usd_per_hour": round(gpus * replicas * GPUS[gpu].usd_per_hour, 2)}


def format_plan(rows: list[dict[str, Any]]) -> str:
    head = (f"{'#':>2}  {'model':<36} {'gpu':<5} {'n':>2} {'limit':>5} {'repl':>4} {'$/Mtok':>8} "
            f"{'kJ/Mtok':>8} {'tok/J':>6} {'util':>5} {'ttft99':>7} {'tpot99':>7}  profile")
    lines = [head]
    for i, r in enumerate(rows, start=1):
        lines.append(f"{i:>2}  {r['model'][-36:]:<36} {r['gpu']:<5} {r['gpus_per_replica']:>2} {r['batch_limit']:>5} "
                     f"{r['replicas']:>4} {r['usd_per_mtok']:>8.3f} {r['joules_per_mtok'] / 1000:>8.1f} "
                     f"{r['tokens_per_joule']:>6.2f} {r['utilization']:>5.2f} {r['ttft_p99_s']:>7.3f} "
                     f"{r['tpot_p99_s']:>7.3f}  {r['profile']}")
    return "\n".join(lines)


def plot_plan(rows: list[dict[str, Any]], path: str) -> None:
    """$ per million tokens against J per million tokens, one point per SLO-meeting shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for gpu_name in sorted({r["gpu"] for r in rows}):
        mine = [r for r in rows if r["gpu"] == gpu_name]
        ax.scatter([r["joules_per_mtok"] / 1000 for r in mine], [r["usd_per_mtok"] for r in mine], label=gpu_name)
        for r in mine:
            ax.annotate(f"{r['gpus_per_replica']}x·b{r['batch_limit']}·r{r['replicas']}",
                        (r["joules_per_mtok"] / 1000, r["usd_per_mtok"]), fontsize=7)
    ax.set_xlabel("kJ per million output tokens")
    ax.set_ylabel("$ per million output tokens")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
