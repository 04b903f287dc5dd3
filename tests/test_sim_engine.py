"""The simulator end to end: conservation, batch fill, the CLI's JSON, the planner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from wattwise.cli import main
from wattwise.sim.engine import simulate
from wattwise.sim.fleet import parse_fleet, profiles_for
from wattwise.sim.planner import parse_slo, plan
from wattwise.sim.traces import Trace

FLEET = """[models.m]
profile = "meta-llama/Llama-3.1-8B-Instruct"
gpu = "H100"
replicas = 2
batch_limit = 64

[batch]
jobs = 20000
deadline_h = 1
input_tokens = 200
output_tokens = 400
"""
KEYS = ("requests", "utilization", "throughput_tok_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
        "slo_attainment", "energy_j", "tokens_per_joule", "usd_per_mtok", "batch_done_before_deadline")


def poisson(rate: float, seconds: float, seed: int = 0) -> Trace:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, int(rate * seconds * 1.2)))
    t = t[t < seconds]
    return Trace(name="poisson", arrival_s=t, input_tokens=rng.integers(100, 1000, len(t)),
                 output_tokens=rng.integers(20, 400, len(t)), duration_s=seconds)


def test_every_request_completes_and_figures_are_sane() -> None:
    fleet = parse_fleet(FLEET)
    trace = poisson(5.0, 600.0)
    s = simulate(fleet=fleet, trace=trace, profiles=profiles_for(fleet)).summary()
    assert s["completed"] == s["requests"] == len(trace)
    assert s["output_tokens"] == int(trace.output_tokens.sum())
    assert 0 < s["utilization"] < 0.5 and 0 < s["ttft_p50_s"] < s["ttft_p99_s"] < 1
    assert 0.007 < s["tpot_p50_s"] < 0.02  # Llama 8B on an H100 at small batch: ~7-10 ms a token
    idle_floor = 2 * 75.0 * s["duration_s"]
    assert s["energy_j"] > idle_floor


def test_batch_fill_raises_utilization_without_hurting_ttft() -> None:
    fleet = parse_fleet(FLEET)
    trace = poisson(5.0, 600.0)
    profiles = profiles_for(fleet)
    plain = simulate(fleet=fleet, trace=trace, profiles=profiles).summary()
    filled = simulate(fleet=fleet, trace=trace, profiles=profiles, batch_fill=True).summary()
    assert filled["utilization"] > 0.9 > plain["utilization"]
    assert filled["tokens_per_joule"] > 2 * plain["tokens_per_joule"]
    assert filled["ttft_p99_s"] <= plain["ttft_p99_s"] + 0.02  # one longer decode step, no queueing
    assert 0 < filled["batch_done_before_deadline"] <= filled["batch_jobs"] == 20000
    assert filled["completed"] == plain["completed"] == len(trace)


def test_overload_queues_in_the_scheduler() -> None:
    fleet = parse_fleet(FLEET.replace("replicas = 2", "replicas = 1").replace("batch_limit = 64", "batch_limit = 4"))
    s = simulate(fleet=fleet, trace=poisson(5.0, 120.0), profiles=profiles_for(fleet)).summary()
    assert s["completed"] == s["requests"] and s["ttft_p99_s"] > 5.0 and s["utilization"] > 0.9


def test_simulate_cli_json(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET)
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2023-11-16 18:{m:02d}:{s:02d}.0,{300 + s},{50 + m}\n" for m in range(5) for s in range(0, 60, 2)))
    result = CliRunner().invoke(main, ["simulate", "--trace", str(trace), "--fleet", str(fleet), "--batch-fill",
                                       "--json", "--plot", str(tmp_path / "u.png")])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert all(k in body for k in KEYS) and body["requests"] == 150
    assert (tmp_path / "u.png").stat().st_size > 1000
    bad = CliRunner().invoke(main, ["simulate", "--trace", str(trace), "--fleet", str(trace)])
    assert bad.exit_code == 2 and "t.csv" in bad.output


def test_plan_ranks_shapes_that_meet_the_slo() -> None:
    trace = poisson(3.0, 300.0)
    rows = plan(trace=trace, models=["meta-llama/Llama-3.1-8B-Instruct"], gpus=["H100", "B200"],
                slo=parse_slo("ttft_p99=1,tpot_p99=0.05"), batch_limits=(32, 128))
    assert rows and all(r["ttft_p99_s"] <= 1 and r["tpot_p99_s"] <= 0.05 for r in rows)
    assert [r["usd_per_mtok"] for r in rows] == sorted(r["usd_per_mtok"] for r in rows)
    assert {r["gpu"] for r in rows} == {"H100", "B200"}
    with pytest.raises(Exception, match="unknown SLO"):
        parse_slo("latency=3")
