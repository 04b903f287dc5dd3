"""Per-application adaptation: the posterior's arithmetic, the app key, the stream dial, the picker."""

from __future__ import annotations

import random
from typing import Any, cast

import pytest

from wattwise.exceptions import InvalidRequest
from wattwise.outcomes import Outcome
from wattwise.request import chat_body
from wattwise.routing.adapt import AppPosterior, Cell, StreamDial, app_key
from wattwise.routing.adapter import TrainedPicker
from wattwise.routing.flywheel import LabelRow
from wattwise.routing.policies import Candidate, Estimate
from wattwise.routing.train import train_router


def est(name: str, quality: float, cost: float = 1.0) -> Estimate:
    return Estimate(name=name, quality=quality, cost_usd=cost, out_tokens=10.0)


def test_shrinkage_starts_at_the_prior_and_ends_at_the_data() -> None:
    post = AppPosterior(strength=20)
    assert post.quality("a", "m", prior=0.8) == 0.8
    post.observe("a", "m", 0.0)
    assert post.quality("a", "m", prior=0.8) == pytest.approx(16 / 21)
    for _ in range(2000):
        post.observe("a", "m", 0.0)
    assert post.quality("a", "m", prior=0.8) < 0.01
    assert Cell().mean is None and post.cell("a", "m").n == 2001


def test_adjust_moves_only_the_application_and_models_with_labels() -> None:
    post = AppPosterior(strength=4)
    estimates = [est("small", 0.9, 0.1), est("big", 0.9, 1.0)]
    assert post.adjust("a", estimates) == estimates and post.adjust(None, estimates) == estimates
    for _ in range(12):
        post.observe("a", "small", 0.0)
    small, big = post.adjust("a", estimates)
    assert small.quality == pytest.approx(0.9 * 4 / 16) and small.cost_usd == 0.1
    assert big == estimates[1]
    assert post.adjust("b", estimates) == estimates
    renamed = post.adjust("a", [est("cheap", 0.9)], names={"cheap": "small"})
    assert renamed[0].quality == pytest.approx(small.quality)


def test_pessimism_takes_standard_errors_off() -> None:
    plain, careful = AppPosterior(strength=5), AppPosterior(strength=5, pessimism=1.0)
    for post in (plain, careful):
        for s in (1.0, 1.0, 0.0, 1.0):
            post.observe("a", "m", s)
    mean = plain.adjust("a", [est("m", 0.8)])[0].quality
    low = careful.adjust("a", [est("m", 0.8)])[0].quality
    assert mean == pytest.approx(0.8 * 5 / 9 + 3 / 9)
    assert low == pytest.approx(mean - (mean * (1 - mean) / 9) ** 0.5)


def test_label_rows_feed_it_as_a_label_sink_and_bad_input_is_refused() -> None:
    post = AppPosterior()
    row = LabelRow(prompt_id="p", prompt="q", model="m", score=1.0, cost_usd=None, energy_j=None, source="judge",
                   ts=0.0, app="a")
    post.add(row)
    post.add(LabelRow(prompt_id="p", prompt="q", model="m", score=1.0, cost_usd=None, energy_j=None,
                      source="judge", ts=0.0, app=None))
    assert post.snapshot() == {"a": {"m": {"n": 1.0, "mean": 1.0}}}
    with pytest.raises(InvalidRequest):
        post.observe("a", "m", 1.5)
    with pytest.raises(InvalidRequest):
        AppPosterior(strength=0)
    with pytest.raises(InvalidRequest):
        AppPosterior(decay=0.0)


def test_memory_is_bounded_and_decay_forgets() -> None:
    post = AppPosterior(max_apps=2)
    for app in ("a", "b", "a", "c"):
        post.observe(app, "m", 1.0)
    assert post.apps() == ["a", "c"]  # b was the least recently observed
    fading = AppPosterior(decay=0.5)
    for s in (1.0, 1.0, 1.0, 0.0):
        fading.observe("a", "m", s)
    cell = fading.cell("a", "m")
    assert cell.n == pytest.approx(1.875) and cell.mean == pytest.approx(0.875 / 1.875)


def test_contender_while_the_upper_bound_reaches() -> None:
    post = AppPosterior()
    assert post.contender("a", "x", against="y")  # nothing known: keep looking
    for i in range(100):
        post.observe("a", "y", 1.0 if i % 10 else 0.0)  # 0.9
        post.observe("a", "x", 1.0 if i % 2 else 0.0)  # 0.5
    assert not post.contender("a", "x", against="y")
    assert post.contender("a", "y", against="x")


def body(**extra: Any) -> Any:
    data: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    data.update(extra)
    return chat_body(data)


def test_app_key_prefers_the_tag_then_user_then_system_prompt() -> None:
    assert app_key(body(wattwise={"tag": "support"}, user="u1")) == "support"
    assert app_key(body(user="u1")) == "u1"
    assert app_key(body(user="u1"), header_tag="hdr") == "hdr"
    sys_a = body(messages=[{"role": "system", "content": "You are A."}, {"role": "user", "content": "x"}])
    sys_a2 = body(messages=[{"role": "system", "content": "You are A."}, {"role": "user", "content": "y"}])
    sys_b = body(messages=[{"role": "developer", "content": [{"type": "text", "text": "You are B."}]},
                           {"role": "user", "content": "x"}])
    assert app_key(sys_a) == app_key(sys_a2) and str(app_key(sys_a)).startswith("sys:")
    assert app_key(sys_b) not in (None, app_key(sys_a))
    assert app_key(body()) is None


def test_stream_dial_trades_quality_for_cost_both_ways() -> None:
    dial = StreamDial(target=0.9, lam0=1.0)
    surplus = [est("small", 0.95, 0.1), est("big", 0.96, 1.0)]
    for _ in range(50):
        dial.update(surplus, "small")
    assert dial.cost_weight > 1.0  # above target: routing may get cheaper
    down = StreamDial(target=0.9, lam0=1.0)
    short = [est("small", 0.3, 0.1), est("big", 0.96, 1.0)]
    for _ in range(50):
        down.update(short, "small")
    assert down.cost_weight < 1.0
    for _ in range(5000):
        down.update(short, "small")
    assert down.cost_weight == pytest.approx(down.lo)
    with pytest.raises(InvalidRequest):
        StreamDial(target=0.0)


@pytest.fixture(scope="module")
def router() -> Any:
    rng = random.Random(0)
    rows = []
    for i in range(40):  # one application's traffic, where the small model is as good as the big one
        prompt = f"Which colour is fruit number {i}? Answer in one word. " + "x" * (i % 5)
        for model, skill in (("small", 0.92), ("big", 0.95)):
            rows.append(Outcome(prompt_id=str(i), task="a", prompt=prompt, model=model,
                                score=float(rng.random() < skill),
                                cost_usd=(0.2 if model == "small" else 20.0) * 30 / 1e6))
    return train_router(rows)


def test_trained_picker_adapts_per_application(router: Any) -> None:
    cands = [Candidate(name="small", input_usd_per_mtok=0.2, output_usd_per_mtok=0.2),
             Candidate(name="big", input_usd_per_mtok=20.0, output_usd_per_mtok=20.0)]
    posterior = AppPosterior(strength=5)
    picker = TrainedPicker(router=router, candidates=cands, posterior=posterior)
    prompt = "Which colour is fruit number 7? Answer in one word."
    coding = body(wattwise={"tag": "coding", "quality_target": 0.9})
    other = body(wattwise={"tag": "fruit", "quality_target": 0.9})
    gateway = cast(Any, None)
    assert picker.pick(prompt=prompt, policy="utility", body=coding, gateway=gateway).model == "small"
    for _ in range(30):  # the coding app's labels: the small model fails it, the big one does not
        posterior.observe("coding", "small", 0.0)
        posterior.observe("coding", "big", 1.0)
    decision = picker.pick(prompt=prompt, policy="utility", body=coding, gateway=gateway)
    assert decision.model == "big" and decision.router_version == picker.version
    assert picker.pick(prompt=prompt, policy="utility", body=other, gateway=gateway).model == "small"
    cascade = picker.pick(prompt=prompt, policy="cascade", body=coding, gateway=gateway)
    assert cascade.model == "big" and cascade.execute is not None
    plain = TrainedPicker(router=router, candidates=cands)
    assert plain.pick(prompt=prompt, policy="utility", body=coding, gateway=gateway).model == "small"


def test_an_adjusted_cascade_runs_its_own_plan(router: Any) -> None:
    import asyncio
    from types import SimpleNamespace

    cands = [Candidate(name="small", input_usd_per_mtok=0.2, output_usd_per_mtok=0.2),
             Candidate(name="big", input_usd_per_mtok=20.0, output_usd_per_mtok=20.0)]
    posterior = AppPosterior(strength=5)
    for _ in range(30):
        posterior.observe("coding", "small", 0.0)
        posterior.observe("coding", "big", 1.0)
    picker = TrainedPicker(router=router, candidates=cands, posterior=posterior)
    decision = picker.pick(prompt="Which colour is fruit number 7?", policy="cascade",
                           body=body(wattwise={"tag": "coding", "quality_target": 0.9}), gateway=cast(Any, None))
    called: list[str] = []

    async def call(model: str) -> Any:
        called.append(model)
        return SimpleNamespace(text="B", cost_usd=0.01, logprob=None)

    assert decision.execute is not None
    result = asyncio.run(decision.execute(call))
    assert called[0] == "big" and result.model == "big"
    # best-of-N too samples the model the adjusted plan chose (it used to route the prompt again, unadjusted)
    called.clear()
    decision = picker.pick(prompt="Which colour is fruit number 7?", policy="best_of_n",
                           body=body(wattwise={"tag": "coding", "quality_target": 0.9}), gateway=cast(Any, None))
    assert decision.execute is not None and decision.model == "big"
    result = asyncio.run(decision.execute(call))
    assert set(called) == {"big"} and result.model == "big"


def test_stream_dial_feedback_corrects_optimistic_estimates() -> None:
    estimates = [est("small", 0.95, 0.1), est("big", 0.96, 1.0)]
    trusting, corrected = StreamDial(target=0.9, lam0=1.0), StreamDial(target=0.9, lam0=1.0)
    for _ in range(200):
        trusting.update(estimates, "small")
        corrected.observe(0.95, 0.5)  # the picks are judged far worse than expected
        corrected.update(estimates, "small")
    assert corrected.bias < -0.3
    assert corrected.cost_weight < 1.0 < trusting.cost_weight


def test_stream_dial_reads_the_best_model_from_the_reference() -> None:
    bounds = [est("small", 0.85, 0.1), est("big", 0.88, 1.0)]
    means = [est("small", 0.9, 0.1), est("big", 0.99, 1.0)]
    on_bounds, on_means = StreamDial(target=0.95, lam0=1.0), StreamDial(target=0.95, lam0=1.0)
    for _ in range(100):
        on_bounds.update(bounds, "small")
        on_means.update(bounds, "small", reference=means)
    assert on_means.cost_weight < 1.0 < on_bounds.cost_weight  # 0.85 < 0.95 x 0.99, but > 0.95 x 0.88


def test_stream_dial_counts_the_plan_expected_quality_not_the_first_model() -> None:
    estimates = [est("small", 0.8, 0.1), est("big", 0.96, 1.0)]  # 0.8 < 0.9 x 0.96: short alone
    alone, planned = StreamDial(target=0.9, lam0=1.0), StreamDial(target=0.9, lam0=1.0)
    for _ in range(100):
        alone.update(estimates, "small")
        planned.update(estimates, "small", expected=0.93)  # a checked cascade starting at small
    assert alone.cost_weight < 1.0 < planned.cost_weight
