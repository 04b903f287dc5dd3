"""``wattwise simulate`` and ``wattwise plan``.

Usage::

    $ wattwise simulate --trace ../shared/data/traces/servegen_m-large --fleet examples/fleet-m-large.toml \\
          --scale 0.1 --hours 24 --batch-fill --json
    $ wattwise plan --trace ../shared/data/traces/azure_llm_2023_conv.csv \\
          --models meta-llama/Llama-3.1-8B-Instruct --gpus H100,H200,B200 --slo ttft_p99=2 --json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from wattwise.exceptions import WattwiseError


def _fail(exc: WattwiseError) -> None:
    click.echo(f"error: {exc.message}", err=True)
    sys.exit(2)


def _trace_options(fn: Any) -> Any:
    for option in reversed([
        click.option("--trace", "trace_path", required=True, type=click.Path(exists=True),
                     help="Azure CSV, ServeGen folder, Mooncake JSONL or outcomes file."),
        click.option("--scale", type=float, default=1.0, show_default=True, help="Share of the traffic to keep."),
        click.option("--hours", type=float, default=None, help="Only this many hours of the trace."),
        click.option("--start-hour", type=float, default=0.0, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--rate", type=float, default=1.0, show_default=True,
                     help="Outcomes traces: requests per second."),
    ]):
        fn = option(fn)
    return fn


def _load_trace(trace_path: str, scale: float, hours: float | None, start_hour: float, seed: int,
                rate: float) -> Any:
    from wattwise.sim.traces import load_trace

    return load_trace(trace_path, scale=scale, hours=hours, start_h=start_hour, seed=seed, rate=rate)


def _text_summary(label: str, s: dict[str, Any]) -> str:
    return (f"{label}: {s['requests']} requests, utilization {s['utilization']:.3f}, "
            f"{s['throughput_tok_s']:.0f} tok/s, TTFT p50/p99 {s['ttft_p50_s']:.3f}/{s['ttft_p99_s']:.3f} s, "
            f"TPOT p50/p99 {s['tpot_p50_s']:.4f}/{s['tpot_p99_s']:.4f} s, SLO {s['slo_attainment']:.3f}, "
            f"{s['energy_j'] / 3.6e6:.1f} kWh, {s['tokens_per_joule']:.3f} tok/J, ${s['usd_per_mtok']}/Mtok, "
            f"batch {s['batch_done_before_deadline']}/{s['batch_jobs']} on time")


@click.command("simulate")
@_trace_options
@click.option("--fleet", "fleet_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--batch-fill", is_flag=True, help="Run the fleet file's [batch] backlog in the valleys.")
@click.option("--compare", is_flag=True, help="Run without and with --batch-fill and print both.")
@click.option("--batch-jobs", type=int, default=None, help="Override [batch] jobs.")
@click.option("--batch-limit", type=int, default=None, help="Override every model's batch limit.")
@click.option("--replicas", type=int, default=None, help="Override every model's replica count.")
@click.option("--policy", default=None, help="Outcomes traces: routing policy that picks each prompt's model.")
@click.option("--quality-target", type=float, default=None, help="Outcomes traces: the router's quality dial.")
@click.option("--choice", type=click.Choice(["least-tokens", "least-requests", "round-robin"]),
              default="least-tokens", show_default=True, help="Replica choice.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="PNG of utilisation and power over time.")
def simulate_command(trace_path: str, scale: float, hours: float | None, start_hour: float, seed: int, rate: float,
                     fleet_path: str, batch_fill: bool, compare: bool, batch_jobs: int | None,
                     batch_limit: int | None, replicas: int | None, policy: str | None,
                     quality_target: float | None, choice: str, as_json: bool, plot: str | None) -> None:
    """Replay a trace through the gateway's scheduler on a modelled fleet."""
    from wattwise.sim.engine import simulate
    from wattwise.sim.fleet import load_fleet, profiles_for
    from wattwise.sim.results import plot_utilization

    try:
        text = Path(fleet_path).read_text(encoding="utf-8")
        fleet = _override(load_fleet(fleet_path), batch_jobs=batch_jobs, batch_limit=batch_limit, replicas=replicas)
        profiles = profiles_for(fleet, text=text, path=fleet_path)
        trace = _load_trace(trace_path, scale, hours, start_hour, seed, rate)
        if policy:
            from wattwise.sim.route import route_trace

            trace = route_trace(trace, fleet, policy=policy, quality_target=quality_target)
        modes = {"without batch": False, "with batch": True} if compare else {
            "with batch" if batch_fill else "run": batch_fill}
        results = {label: simulate(fleet=fleet, trace=trace, profiles=profiles, batch_fill=fill, choice=choice)
                   for label, fill in modes.items()}
    except WattwiseError as exc:
        _fail(exc)
        return
    if plot:
        plot_utilization(results, plot)
    summaries = {label: r.summary() for label, r in results.items()}
    meta = {"trace": trace.name, "fleet": fleet.fleet.name, "scale": scale, "hours": hours}
    if as_json:
        body = summaries[next(iter(summaries))] if len(summaries) == 1 else {"runs": summaries}
        click.echo(json.dumps({**meta, **body}))
        return
    for label, summary in summaries.items():
        click.echo(_text_summary(label, summary))


def _override(fleet: Any, *, batch_jobs: int | None, batch_limit: int | None, replicas: int | None) -> Any:
    models = {name: spec.model_copy(update={k: v for k, v in (("batch_limit", batch_limit), ("replicas", replicas))
                                            if v is not None}) for name, spec in fleet.models.items()}
    batch = fleet.batch.model_copy(update={"jobs": batch_jobs}) if batch_jobs is not None else fleet.batch
    return fleet.model_copy(update={"models": models, "batch": batch})


@click.command("plan")
@_trace_options
@click.option("--models", required=True, help="Comma-separated ML.ENERGY model ids.")
@click.option("--gpus", default="H100,H200,B200", show_default=True)
@click.option("--slo", "slo_text", default="ttft_p99=2", show_default=True, help="e.g. ttft_p99=2,tpot_p99=0.1")
@click.option("--objective", type=click.Choice(["usd", "joules"]), default="usd", show_default=True)
@click.option("--batch-limits", default="64,128,256,512", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="PNG of $ against J per Mtok.")
def plan_command(trace_path: str, scale: float, hours: float | None, start_hour: float, seed: int, rate: float,
                 models: str, gpus: str, slo_text: str, objective: str, batch_limits: str, as_json: bool,
                 plot: str | None) -> None:
    """Search fleet shapes with the simulator; rank those that meet the SLO by $ or J per Mtok."""
    from wattwise.sim.planner import format_plan, parse_slo, plan, plot_plan

    try:
        slo = parse_slo(slo_text)
        limits = tuple(int(x) for x in batch_limits.split(",") if x.strip())
        trace = _load_trace(trace_path, scale, hours, start_hour, seed, rate)
        rows = plan(trace=trace, models=[m.strip() for m in models.split(",") if m.strip()],
                    gpus=[g.strip() for g in gpus.split(",") if g.strip()], slo=slo, objective=objective,
                    batch_limits=limits)
    except WattwiseError as exc:
        _fail(exc)
        return
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--batch-limits") from None
    if plot:
        plot_plan(rows, plot)
    if as_json:
        click.echo(json.dumps({"trace": trace.name, "slo": slo, "objective": objective, "shapes": rows}))
    else:
        click.echo(format_plan(rows) if rows else "no shape met the SLO")
