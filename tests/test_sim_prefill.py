"""Prefill costs GPU time: it shares one compute lane with decoding, and is not counted twice."""

from __future__ import annotations

import numpy as np
import pytest

from wattwise.sim.engine import simulate
from wattwise.sim.fleet import parse_fleet, profiles_for
from wattwise.sim.profiles import ProfileCatalog
from wattwise.sim.results import Result
from wattwise.sim.traces import Trace

LLAMA8 = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA70 = "meta-llama/Llama-3.1-70B-Instruct"
ONE = """[models.m]
profile = "meta-llama/Llama-3.1-8B-Instruct"
gpu = "H100"
replicas = 1
batch_limit = {limit}

[batch]
jobs = {jobs}
deadline_h = 1
input_tokens = {inp}
output_tokens = {out}
"""


def one_request(at: float, seconds: float) -> Trace:
    return Trace(name="one", arrival_s=np.array([at]), input_tokens=np.array([10]), output_tokens=np.array([10]),
                 duration_s=seconds)


def run(*, limit: int, jobs: int, inp: int, out: int, at: float, seconds: float) -> Result:
    fleet = parse_fleet(ONE.format(limit=limit, jobs=jobs, inp=inp, out=out))
    return simulate(fleet=fleet, trace=one_request(at, seconds), profiles=profiles_for(fleet), batch_fill=True)


def test_decode_step_plus_benchmark_prefill_is_the_measured_step() -> None:
    profile = ProfileCatalog.shipped().profile(model=LLAMA70, gpu="H100", gpus=4)
    assert profile.mix_prefill_s > 0
    for point in profile.points:
        decode = profile.decode_step_s(point.batch, mfu=0.5)
        assert decode < point.step_s
        assert decode + profile.mix_step_s(point.batch, mfu=0.5) == pytest.approx(point.step_s, rel=1e-9)
        if point.batch <= 256:  # vLLM's measured median inter-token latency (looser above: see the docs)
            assert decode == pytest.approx(point.itl_s, rel=0.1)


def test_prefill_is_a_compute_roofline() -> None:
    profile = ProfileCatalog.shipped().profile(model=LLAMA70, gpu="H100", gpus=4)
    # 2 · 70e9 FLOPs a token over 4 × 989 TFLOPS at 50%: about 71 µs a token.
    assert profile.prefill_s(1000, mfu=0.5) == pytest.approx(1000 * 2 * 70e9 / (4 * 989e12 * 0.5))


def test_long_prompts_leave_fewer_decode_tokens_per_second() -> None:
    short = run(limit=64, jobs=100_000, inp=100, out=200, at=0.0, seconds=300.0).summary()
    long = run(limit=64, jobs=100_000, inp=4000, out=200, at=0.0, seconds=300.0).summary()
    assert short["utilization"] > 0.95 and long["utilization"] > 0.95  # both full: slots are not the limit
    assert long["throughput_tok_s"] < 0.5 * short["throughput_tok_s"]
    assert long["prefill_share"] > 0.5 > 0.1 > short["prefill_share"]
    assert long["tokens_per_joule"] < 0.6 * short["tokens_per_joule"]


def test_eviction_recomputes_the_prompt_and_costs_time() -> None:
    p = ProfileCatalog.shipped().profile(model=LLAMA8, gpu="H100", gpus=1).prefill_s(1, mfu=0.5)
    # One batch job on a one-slot replica; the interactive request comes after it (30 s) or evicts it (2 s).
    plain = run(limit=1, jobs=1, inp=4000, out=400, at=30.0, seconds=60.0)
    evicted = run(limit=1, jobs=1, inp=4000, out=400, at=2.0, seconds=60.0)
    assert (plain.evictions, evicted.evictions) == (0, 1)
    assert plain.batch_done == evicted.batch_done == 1 and plain.batch_tokens == evicted.batch_tokens == 400
    assert plain.prefill_share * 60.0 == pytest.approx(4010 * p, rel=1e-6)
    extra_prefill = (evicted.prefill_share - plain.prefill_share) * 60.0
    assert 4000 * p < extra_prefill < 4400 * p  # the prompt again, and the tokens made before eviction
    extra_busy = (evicted.utilization - plain.utilization) * 60.0  # the slot is held while it prefills again
    assert extra_busy == pytest.approx(extra_prefill, rel=0.1)  # and the step it was in the middle of
    assert evicted.energy_j > plain.energy_j


def test_interactive_prefill_goes_before_batch_prefill() -> None:
    # A replica whose queue holds 64 long batch prompts when the request arrives: its prompt jumps them.
    result = run(limit=65, jobs=64, inp=8000, out=50, at=0.01, seconds=60.0)
    queued = 64 * 8000 * ProfileCatalog.shipped().profile(model=LLAMA8, gpu="H100", gpus=1).prefill_s(1)
    assert result.ttft[0] < 0.1 * queued
