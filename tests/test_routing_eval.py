"""Metrics, eval harness and the train/eval CLI on small synthetic outcomes files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from test_routing_router import synthetic
from wattwise.outcomes import write_outcomes
from wattwise.routing import metrics
from wattwise.routing.cli import eval_command, train_command
from wattwise.routing.evaluate import oracle, run_eval, split_folds


def test_hull_drops_dominated_points_and_keeps_rising() -> None:
    pts = [(1.0, 0.5), (2.0, 0.55), (3.0, 0.8), (4.0, 0.7), (10.0, 0.9)]
    assert metrics.hull(pts) == [(1.0, 0.5), (3.0, 0.8), (10.0, 0.9)]


def test_aiq_and_apgr_on_a_known_curve() -> None:
    pts = [(0.0, 0.5), (1.0, 1.0)]  # a straight line from weak to strong
    assert metrics.aiq(pts, c_min=0.0, c_max=1.0) == pytest.approx(0.75, abs=1e-6)
    assert metrics.apgr(pts, x_weak=0.0, x_strong=1.0, q_weak=0.5, q_strong=1.0) == pytest.approx(
        0.5, abs=1e-6
    )
    assert metrics.cpt(pts, x_weak=0.0, x_strong=1.0, q_weak=0.5, q_strong=1.0, share=0.8) == pytest.approx(
        0.8
    )
    assert metrics.cost_to_reach(pts, 0.9) == 1.0 and metrics.cost_to_reach(pts, 1.1) is None


def test_folds_split_by_prompt_and_cover_everything() -> None:
    rows = synthetic(40)
    folds = split_folds(rows, 4)
    tests = [{r.prompt_id for r in te} for _, te in folds]
    assert sum(len(t) for t in tests) == 40 and len(set().union(*tests)) == 40
    for tr, te in folds:
        assert not {r.prompt_id for r in tr} & {r.prompt_id for r in te}


def test_eval_report_has_required_fields_and_beats_nothing_it_should_not() -> None:
    rows = synthetic(160)
    train = [r for r in rows if int(r.prompt_id[1:]) < 100]
    test = [r for r in rows if int(r.prompt_id[1:]) >= 100]
    report = run_eval([(train, test)], policies=["utility", "cascade", "best_of_n"])
    for key in (
        "best_single",
        "cheapest_single",
        "oracle",
        "curve",
        "max_quality",
        "aiq",
        "apgr",
        "cost_ratio_at_best_single_quality",
        "cost_ratio_at_95pct",
    ):
        assert key in report
    assert report["best_single"]["model"] == "big" and report["cheapest_single"]["model"] == "small"
    assert report["oracle"]["quality"] >= report["max_quality"]
    assert all({"quality", "cost_usd", "setting"} <= p.keys() for p in report["curve"])
    # routing math prompts to 'small' must reach 95% of 'big' for well under big's cost
    assert report["cost_ratio_at_95pct"] is not None and report["cost_ratio_at_95pct"] < 0.8
    assert report["policies"]["best_of_n"]["applicable"] is False
    assert report["policies"]["cascade"]["curve"]


def test_oracle_takes_cheapest_right_model() -> None:
    rows = synthetic(20)
    table: dict[str, dict] = {}
    for r in rows:
        table.setdefault(r.prompt_id, {})[r.model] = r
    o = oracle(table)
    assert o["quality"] == pytest.approx(
        sum(max(r.score for r in per.values()) for per in table.values()) / 20
    )


def test_cli_train_then_eval_json_and_plot(tmp_path: Path) -> None:
    rows = synthetic(120)
    train, test = tmp_path / "train.jsonl.gz", tmp_path / "test.jsonl"
    write_outcomes(train, [r for r in rows if int(r.prompt_id[1:]) < 80])
    write_outcomes(test, [r for r in rows if int(r.prompt_id[1:]) >= 80])
    runner = CliRunner()
    out = runner.invoke(train_command, [str(train), "--out", str(tmp_path / "r.json"), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["models"] == ["big", "mid", "small"]
    plot = tmp_path / "plot.png"
    res = runner.invoke(eval_command, [str(train), "--test", str(test), "--json", "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["max_quality"] > 0.5 and plot.stat().st_size > 1000
    human = runner.invoke(eval_command, [str(train), "--folds", "2", "--policy", "all"])
    assert human.exit_code == 0 and "oracle" in human.stdout and "not applicable" in human.stdout


def test_cli_eval_names_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_id": "a", "task": "t", "prompt": "p", "model": "m"}\n')
    res = CliRunner().invoke(eval_command, [str(bad), "--folds", "2"])
    assert res.exit_code != 0 and "bad.jsonl:1" in res.output and "score" in res.output
    both = CliRunner().invoke(eval_command, [str(bad)])
    assert both.exit_code != 0
