"""Simulator inputs: traces, fleet files and hardware profiles, and the errors bad ones give."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wattwise.data import shipped_path
from wattwise.sim.fleet import FleetError, parse_fleet, profiles_for
from wattwise.sim.profiles import ProfileCatalog, ProfileError
from wattwise.sim.traces import TraceError, load_trace, window_arrivals

LLAMA8 = "meta-llama/Llama-3.1-8B-Instruct"


def test_azure_csv(tmp_path: Path) -> None:
    path = tmp_path / "azure.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                    "2023-11-16 18:15:50.9951690,396,109\n2023-11-16 18:15:48.0000000,10,0\n")
    trace = load_trace(path)
    assert trace.arrival_s.tolist() == pytest.approx([0.0, 1.3194, 4.3146], abs=1e-3)
    assert trace.input_tokens.tolist() == [374, 10, 396] and trace.output_tokens.tolist() == [44, 1, 109]


def test_azure_bad_field_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "azure.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,374,44\n2023-11-16 18:15:47,x,1\n")
    with pytest.raises(TraceError, match=r"azure\.csv:3: .*field 'ContextTokens'"):
        load_trace(path)


def test_mooncake_jsonl_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "mooncake.jsonl"
    rows = [{"timestamp": 0, "input_length": 100, "output_length": 10, "hash_ids": [1]},
            {"timestamp": 1500, "input_length": 50, "output_length": 5, "hash_ids": [2]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    trace = load_trace(path)
    assert trace.arrival_s.tolist() == [0.0, 1.5] and trace.output_tokens.tolist() == [10, 5]
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"timestamp": 2}) + "\n")
    with pytest.raises(TraceError, match=r"mooncake\.jsonl:2: .*field 'input_length'"):
        load_trace(path)


def test_servegen_rate_and_burstiness(tmp_path: Path) -> None:
    folder = tmp_path / "sg"
    folder.mkdir()
    (folder / "chunk-0-trace.csv").write_text("0,10.0,1.0,,0,0\n600,0,0,,0,0\n1200,2.0,3.0,Gamma,0.1,5.0\n")
    (folder / "chunk-1-trace.csv").write_text("0,5.0,2.0,Weibull,0.5,1.0\n600,0,0,,0,0\n1200,0,0,,0,0\n")
    trace = load_trace(folder, seed=3)
    first = np.sum(trace.arrival_s < 600)
    assert 15 * 600 * 0.8 < first < 15 * 600 * 1.2
    assert np.sum((trace.arrival_s >= 600) & (trace.arrival_s < 1200)) == 0
    assert trace.duration_s == 1800.0 and trace.input_tokens.min() >= 16
    (folder / "chunk-1-trace.csv").write_text("0,abc,2.0,Weibull,0.5,1.0\n")
    with pytest.raises(TraceError, match=r"chunk-1-trace\.csv:1: .*field 'rate'"):
        load_trace(folder)


def test_window_arrivals_keep_cv() -> None:
    rng = np.random.default_rng(0)
    times = window_arrivals(rng, rate=50.0, length_s=600.0, dist="Gamma", shape=0.25)
    gaps = np.diff(times)
    assert len(times) == pytest.approx(30000, rel=0.1)
    assert gaps.std() / gaps.mean() == pytest.approx(2.0, rel=0.15)  # Gamma shape k has CV 1/sqrt(k)


def test_outcomes_trace_has_per_model_tokens() -> None:
    trace = load_trace(shipped_path("outcomes/routerbench_zs.test.jsonl.gz"), rate=2.0)
    assert len(trace) == 945 and trace.tokens is not None and trace.prompts is not None
    assert len(next(iter(trace.tokens.values()))) == 11


def test_measured_profile_reproduces_its_points() -> None:
    catalog = ProfileCatalog.shipped()
    profile = catalog.profile(model=LLAMA8, gpu="H100", gpus=1)
    assert profile.source == "measured"
    for point in profile.points:
        assert point.batch / profile.step_s(point.batch) == pytest.approx(point.tokens_per_s, rel=1e-9)
        tokens_per_joule = point.batch / (profile.watts(point.batch) * profile.step_s(point.batch))
        assert 1 / tokens_per_joule == pytest.approx(point.joules_per_token, rel=0.02)
    assert profile.watts(0) == profile.idle_w == 75.0


def test_unmeasured_gpu_is_scaled_by_bandwidth() -> None:
    catalog = ProfileCatalog.shipped()
    h100 = catalog.profile(model=LLAMA8, gpu="H100", gpus=1)
    h200 = catalog.profile(model=LLAMA8, gpu="H200", gpus=1)
    assert h200.source.startswith("roofline-scaled from 1xH100")
    assert h100.step_s(64) / h200.step_s(64) == pytest.approx(4.8 / 3.35)


def test_roofline_needs_params_and_known_gpu() -> None:
    catalog = ProfileCatalog.shipped()
    with pytest.raises(ProfileError, match=r"no ML\.ENERGY profile"):
        catalog.profile(model="acme/unknown", gpu="H100", gpus=1)
    profile = catalog.profile(model="acme/unknown", gpu="H100", gpus=1, params_b=8.0)
    assert profile.source == "roofline" and 0.005 < profile.step_s(1) < 0.02
    with pytest.raises(ProfileError, match="unknown GPU"):
        catalog.profile(model=LLAMA8, gpu="TPU", gpus=1)


FLEET = """[fleet]
name = "t"

[models.small]
profile = "{profile}"
gpu = "{gpu}"
batch_limit = {limit}
"""


def test_fleet_errors_name_file_line_and_field() -> None:
    with pytest.raises(FleetError, match=r"f\.toml:6: .*field 'models\.small\.gpu'"):
        parse_fleet(FLEET.format(profile=LLAMA8, gpu="TPU9", limit=8), path="f.toml")
    with pytest.raises(FleetError, match=r"f\.toml:7: .*field 'models\.small\.batch_limit'"):
        parse_fleet(FLEET.format(profile=LLAMA8, gpu="H100", limit=0), path="f.toml")
    with pytest.raises(FleetError, match=r"f\.toml:3: not valid TOML"):
        parse_fleet("[fleet]\nname = 't'\nx = \n", path="f.toml")
    text = FLEET.format(profile="acme/nothing", gpu="H100", limit=8)
    with pytest.raises(FleetError, match=r"f\.toml:5: .*no roofline parameters.*field 'models\.small\.profile'"):
        profiles_for(parse_fleet(text, path="f.toml"), text=text, path="f.toml")
