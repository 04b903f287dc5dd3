"""flywheel-sim: a synthetic two-application stream through labelling, retraining and adaptation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from wattwise.cli import main
from wattwise.outcomes import Outcome, write_outcomes
from wattwise.routing.flysim import SimConfig, simulate
from wattwise.routing.flysim_cli import render
from wattwise.routing.router import Router
from wattwise.routing.train import train_router

# app-a: every model is good; app-b: only the big one is. The prior router sees app-a only.
SKILL = {"app-a": {"small": 0.92, "mid": 0.9, "big": 0.95}, "app-b": {"small": 0.1, "mid": 0.45, "big": 0.95}}
PRICE = {"small": (0.2, 0.2), "mid": (1.0, 2.0), "big": (10.0, 30.0)}  # $ per million tokens in, out
TEXT = {"app-a": "Which colour is fruit number {i}? Answer with one word about the apple orchard.",
        "app-b": "Write a python function number {i} that parses the log file and returns a dict of counts."}


def synthetic(split: str, n: int, *, apps: tuple[str, ...] = ("app-a", "app-b"), seed: int = 0) -> list[Outcome]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        app = apps[i % len(apps)]
        prompt = TEXT[app].format(i=f"{split}-{i}") + " " + " ".join(rng.choice("xyzw") for _ in range(i % 7))
        for model, skill in SKILL[app].items():
            n_in, n_out = len(prompt) // 4, 20
            p_in, p_out = PRICE[model]
            rows.append(Outcome(prompt_id=f"{split}-{i}", task=app, prompt=prompt, model=model,
                                score=float(rng.random() < skill), cost_usd=(n_in * p_in + n_out * p_out) / 1e6,
                                input_tokens=n_in, output_tokens=n_out, response=f"answer of {model}"))
    return rows


@pytest.fixture(scope="module")
def shipped() -> list[Outcome]:
    return synthetic("train", 60, apps=("app-a",), seed=1)


@pytest.fixture(scope="module")
def prior(shipped: list[Outcome]) -> Router:
    return train_router(shipped)


@pytest.fixture(scope="module")
def stream() -> list[Outcome]:
    return synthetic("test", 200, seed=2)


FAST = {"judge_model": "small", "judge_share": 0.5, "shadow_share": 0.5, "budget_usd_per_day": 10.0,
        "label_cap": 15, "window": 20, "quality_target": 0.95}


def test_adaptation_recovers_the_application_the_prior_router_never_saw(
    prior: Router, shipped: list[Outcome], stream: list[Outcome]
) -> None:
    report = simulate(stream, router=prior, shipped=shipped, config=SimConfig(retrain_every=0, **FAST))
    last = report["last_half"]
    assert report["best_single_model"] == "big"
    # The prior router thinks the small model is good everywhere: app-b's answers fail.
    assert last["static_quality"] < 0.7
    assert last["quality"] > last["static_quality"] + 0.15
    assert last["quality_share_of_best"] > 0.85
    # ... and still far cheaper than sending everything to the big model, labels included.
    assert last["cost_usd"] + last["labelling_usd"] < 0.7 * last["best_single_cost_usd"]
    served_b = report["last_half_served"]["app-b"]
    assert max(served_b, key=lambda m: served_b[m]["requests"]) == "big"
    post = report["posterior"]
    assert post["app-b"]["small"]["mean"] < 0.3 and post["app-a"]["small"]["mean"] > 0.7
    labels = report["labels"]
    assert labels["total"] == labels["judge"] + labels["shadow"] > 0
    assert report["whole"]["labelling_usd"] == pytest.approx(
        report["first_half"]["labelling_usd"] + last["labelling_usd"])
    assert 0 < report["whole"]["labelling_shadow_usd"] < report["whole"]["labelling_usd"]
    assert sum(p["prompts"] for p in report["curve"]) == report["prompts"] == 200


def test_no_adaptation_and_no_budget_is_the_static_router(
    prior: Router, shipped: list[Outcome], stream: list[Outcome]
) -> None:
    config = SimConfig(retrain_every=0, adapt=False, **{**FAST, "budget_usd_per_day": 0.0})
    report = simulate(stream, router=prior, shipped=shipped, config=config)
    assert report["labels"]["total"] == 0 and report["whole"]["labelling_usd"] == 0.0
    assert report["whole"]["quality"] == report["whole"]["static_quality"]
    assert report["whole"]["cost_usd"] == pytest.approx(report["whole"]["static_cost_usd"])


def test_a_judge_that_always_flips_teaches_the_opposite(
    prior: Router, shipped: list[Outcome], stream: list[Outcome]
) -> None:
    config = SimConfig(retrain_every=0, judge_noise=1.0, **FAST)
    post = simulate(stream, router=prior, shipped=shipped, config=config)["posterior"]
    assert post["app-b"]["small"]["mean"] > 0.7  # its answers are mostly wrong, the judge says right


def test_retraining_runs_the_flywheel_retrain_and_records_it(
    prior: Router, shipped: list[Outcome], stream: list[Outcome]
) -> None:
    trained: list[int] = []

    def train(rows: list[Outcome]) -> Router:
        trained.append(len(rows))
        return train_router(rows)

    report = simulate(stream, router=prior, shipped=shipped, config=SimConfig(retrain_every=150, **FAST),
                      train=train)
    assert report["retrains"] and len(trained) == len(report["retrains"])
    first = report["retrains"][0]
    assert first["labels"] >= 150 and trained[0] > len(shipped)  # shipped rows plus the older labels
    assert isinstance(first["promoted"], bool) and "hold-out" in first["detail"]


def test_cli_prints_last_half_and_writes_the_plot(tmp_path: Path, shipped: list[Outcome],
                                                  stream: list[Outcome]) -> None:
    write_outcomes(tmp_path / "stream.jsonl.gz", stream)
    write_outcomes(tmp_path / "train.jsonl", shipped + synthetic("other", 10, apps=("app-b",)))
    plot = tmp_path / "sim.png"
    result = CliRunner().invoke(main, [
        "flywheel-sim", str(tmp_path / "stream.jsonl.gz"), "--shipped", str(tmp_path / "train.jsonl"),
        "--shipped-task", "app-a", "--retrain-every", "0", "--judge-share", "0.5", "--label-cap", "15",
        "--window", "25", "--json", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("quality", "cost_usd", "labelling_usd", "best_single_quality", "best_single_cost_usd"):
        assert isinstance(report["last_half"][key], float)
    assert report["last_half"]["prompts"] == 100 and report["shipped_tasks"] == ["app-a"]
    assert plot.stat().st_size > 10_000
    assert "flywheel (labels counted)" in render(report)


def test_cli_names_a_bad_judge_model(tmp_path: Path, prior: Router, stream: list[Outcome]) -> None:
    write_outcomes(tmp_path / "stream.jsonl", stream)
    prior.save(tmp_path / "router.json")
    result = CliRunner().invoke(main, ["flywheel-sim", str(tmp_path / "stream.jsonl"), "--judge-model", "nope",
                                       "--router", str(tmp_path / "router.json"), "--retrain-every", "0"])
    assert result.exit_code != 0 and "judge model 'nope'" in result.output


def test_cascade_plan_quality_and_serving_cost() -> None:
    import asyncio

    from wattwise.routing.flysim import plan_quality, serve
    from wattwise.routing.policies import Estimate, RouteDecision

    ests = [Estimate(name=m, quality=q, cost_usd=c, out_tokens=1.0)
            for m, q, c in (("small", 0.8, 0.01), ("mid", 0.7, 0.02), ("big", 0.9, 1.0))]
    single = RouteDecision(model="small", policy="utility", reason="", predicted_quality=0.8,
                           predicted_cost_usd=0.01, steps=("small",))
    checked = RouteDecision(model="small", policy="cascade", reason="", predicted_quality=0.8,
                            predicted_cost_usd=0.01, steps=("small", "mid", "big"))
    assert plan_quality(single, ests) == pytest.approx(0.8)
    # agree and right 0.56, disagree 1 - 0.56 - 0.06 = 0.38, escalated at 0.9
    assert plan_quality(checked, ests) == pytest.approx(0.56 + 0.38 * 0.9)

    def row(model: str, text: str, cost: float, score: float) -> Outcome:
        return Outcome(prompt_id="p", task="t", prompt="q?", model=model, score=score, cost_usd=cost,
                       response=text)

    agree = {"small": row("small", "The answer is B", 0.01, 1.0), "mid": row("mid", "The answer is B", 0.02, 1.0),
             "big": row("big", "The answer is B", 1.0, 1.0)}
    differ = {**agree, "mid": row("mid", "The answer is C", 0.02, 0.0)}
    assert asyncio.run(serve(single, agree)) == ("small", 0.01, frozenset({"small"}))
    assert asyncio.run(serve(checked, agree)) == ("small", pytest.approx(0.03), frozenset({"small", "mid"}))
    assert asyncio.run(serve(checked, differ)) == ("big", pytest.approx(1.03), frozenset({"small", "mid", "big"}))


def test_cascade_stream_serves_and_learns(prior: Router, shipped: list[Outcome], stream: list[Outcome]) -> None:
    report = simulate(stream, router=prior, shipped=shipped,
                      config=SimConfig(retrain_every=0, policy="cascade", **FAST))
    last = report["last_half"]
    assert report["config"]["policy"] == "cascade"
    assert last["quality"] > last["static_quality"] + 0.15 and last["quality_share_of_best"] > 0.85
    assert report["whole"]["cost_usd"] == pytest.approx(report["first_half"]["cost_usd"] + last["cost_usd"])


def test_precision_stops_labelling_a_known_cell(prior: Router, shipped: list[Outcome],
                                                stream: list[Outcome]) -> None:
    loose = simulate(stream, router=prior, shipped=shipped, config=SimConfig(retrain_every=0, **FAST))
    tight = simulate(stream, router=prior, shipped=shipped,
                     config=SimConfig(retrain_every=0, precision=0.1, **FAST))
    assert tight["labels"]["total"] < loose["labels"]["total"]
    # se = sqrt(max(p(1-p), 0.01) / n) <= 0.1 by n = 25 whatever the mean: no cell goes far past it
    assert max(c["n"] for cells in tight["posterior"].values() for c in cells.values()) <= 30
    assert max(c["n"] for cells in loose["posterior"].values() for c in cells.values()) > 30


def test_cli_passes_policy_and_precision(tmp_path: Path, prior: Router, stream: list[Outcome]) -> None:
    write_outcomes(tmp_path / "stream.jsonl", stream)
    prior.save(tmp_path / "router.json")
    result = CliRunner().invoke(main, ["flywheel-sim", str(tmp_path / "stream.jsonl"), "--router",
                                       str(tmp_path / "router.json"), "--retrain-every", "0", "--policy", "cascade",
                                       "--precision", "0.05", "--json"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)["config"]
    assert config["policy"] == "cascade" and config["precision"] == 0.05
