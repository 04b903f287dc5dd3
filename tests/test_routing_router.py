"""Router, policies and executors on small synthetic outcomes (fast; no shared data needed)."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
from pathlib import Path

import pytest

from wattwise.exceptions import InvalidRequest, OutcomesError
from wattwise.outcomes import Outcome, load_outcomes
from wattwise.routing.execute import Answer, agree, answer_key, majority, run_best_of_n, run_cascade
from wattwise.routing.router import Candidate, Router
from wattwise.routing.train import train_router

MATH = "Compute the sum of {a} and {b}. Give only the number."
CODE = "Write a python function to reverse a list named items{a} and return it {b}."


def synthetic(n: int = 120, seed: int = 1) -> list[Outcome]:
    """Two prompt kinds; 'small' is good at arithmetic only, 'big' at both; 'mid' in between."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = "math" if i % 2 else "code"
        prompt = (MATH if kind == "math" else CODE).format(a=rng.randint(1, 99), b=rng.randint(1, 99))
        odds = {"small": 0.95 if kind == "math" else 0.1, "mid": 0.9 if kind == "math" else 0.5, "big": 0.97}
        price = {"small": 0.1, "mid": 1.0, "big": 10.0}
        for model, p in odds.items():
            right = rng.random() < p
            answer = str(i) if right else str(-i)
            response = answer if kind == "math" else f"def f(items):\n    return items[::-1]  # {answer}"
            rows.append(
                Outcome(
                    prompt_id=f"p{i}",
                    task="synthetic",
                    prompt=prompt,
                    model=model,
                    score=float(right),
                    cost_usd=price[model] * (len(prompt) + 40) / 4e6,
                    response=response,
                )
            )
    return rows


@pytest.fixture(scope="module")
def router() -> Router:
    return train_router(synthetic())


def cands(*names: str) -> list[Candidate]:
    prices = {"small": 0.1, "mid": 1.0, "big": 10.0}
    return [
        Candidate(name=n, input_usd_per_mtok=prices.get(n), output_usd_per_mtok=prices.get(n)) for n in names
    ]


def test_utility_routes_easy_prompts_cheap_and_hard_ones_big(router: Router) -> None:
    easy = router.route(MATH.format(a=3, b=4), cands("small", "mid", "big"), quality_target=0.9)
    hard = router.route(CODE.format(a=3, b=4), cands("small", "mid", "big"), quality_target=0.9)
    assert easy.model == "small"
    assert hard.model == "big"
    assert easy.predicted_quality is not None and easy.predicted_quality > 0.8
    assert hard.predicted_cost_usd is not None and easy.predicted_cost_usd is not None
    assert hard.predicted_cost_usd > easy.predicted_cost_usd


def test_reason_is_short_ascii_single_line(router: Router) -> None:
    d = router.route(CODE.format(a=1, b=2), cands("small", "big"))
    assert d.reason.isascii() and "\n" not in d.reason and len(d.reason) < 300
    assert d.policy == "utility" and d.model in d.reason


def test_max_cost_caps_the_choice(router: Router) -> None:
    prompt = CODE.format(a=1, b=2)
    free = router.route(prompt, cands("small", "big"), quality_target=1.0)
    capped = router.route(prompt, cands("small", "big"), max_cost_usd=free.predicted_cost_usd / 5)
    assert free.model == "big" and capped.model == "small"


def test_cost_weight_sweep_is_monotone_in_cost(router: Router) -> None:
    prompt = CODE.format(a=5, b=6)
    costs = [
        router.route(prompt, cands("small", "mid", "big"), cost_weight=w).predicted_cost_usd
        for w in (0.0, 0.3, 3.0, 100.0)
    ]
    assert costs == sorted(costs, reverse=True) and costs[0] > costs[-1]


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_quality_target_out_of_range_names_the_field(router: Router, bad: float) -> None:
    with pytest.raises(InvalidRequest) as info:
        router.route("hi", cands("small"), quality_target=bad)
    assert info.value.param == "wattwise.quality_target" and info.value.status == 400


def test_unknown_policy_is_invalid_request_on_model(router: Router) -> None:
    with pytest.raises(InvalidRequest) as info:
        router.route("hi", cands("small"), policy="nope")
    assert info.value.param == "model"


def test_unknown_model_gets_price_class_prior(router: Router) -> None:
    new = Candidate(name="fresh", input_usd_per_mtok=9.0, output_usd_per_mtok=9.0)
    est = {e.name: e for e in router.estimate(CODE.format(a=1, b=1), [*cands("small", "big"), new])}
    assert est["fresh"].prior and not est["big"].prior
    # priced like 'big', so expected to answer like it rather than like 'small'
    assert abs(est["fresh"].quality - est["big"].quality) < abs(est["fresh"].quality - est["small"].quality)
    d = router.route(CODE.format(a=1, b=1), [*cands("small"), new], quality_target=1.0)
    assert "no training data for fresh: price-class prior" in d.reason


def test_trained_as_maps_config_names(router: Router) -> None:
    c = [
        Candidate(name="cheap-one", input_usd_per_mtok=0.1, output_usd_per_mtok=0.1, trained_as="small"),
        Candidate(name="pricey", input_usd_per_mtok=10, output_usd_per_mtok=10, trained_as="big"),
    ]
    assert router.route(MATH.format(a=1, b=2), c, quality_target=0.9).model == "cheap-one"


def test_save_load_round_trip_is_json(router: Router, tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    router.save(path)
    assert json.loads(path.read_text())["format"] == "wattwise-router/2"
    again = Router.load(path)
    assert again.version == router.version and len(router.version) == 12
    prompt = CODE.format(a=7, b=8)
    a, b = router.route(prompt, cands("small", "big")), again.route(prompt, cands("small", "big"))
    assert a.model == b.model and a.predicted_quality == pytest.approx(b.predicted_quality, abs=1e-4)
    assert router.policies() == ["best_of_n", "cascade", "reasoning", "utility"]


def test_default_router_loads_and_routes() -> None:
    r = Router.default()
    assert len(r.models()) >= 2
    d = r.route(
        "Which planet is largest?\nA) Mars\nB) Jupiter\nAnswer:",
        [Candidate(name=m, input_usd_per_mtok=None, output_usd_per_mtok=None) for m in r.models()],
    )
    assert d.model in r.models() and 0.0 < (d.predicted_quality or 0) < 1.0


def test_reasoning_policy_sets_effort_from_difficulty(router: Router) -> None:
    c = [
        *cands("small"),
        Candidate(
            name="thinker", input_usd_per_mtok=5, output_usd_per_mtok=5, trained_as="big", reasoning=True
        ),
    ]
    easy = router.route(MATH.format(a=1, b=2), c, policy="reasoning")
    hard = router.route(CODE.format(a=1, b=2), c, policy="reasoning")
    assert easy.reasoning_effort is None and easy.model == "small"
    assert hard.model == "thinker" and hard.reasoning_effort in ("low", "medium", "high")
    assert hard.max_thinking_tokens is not None and hard.max_thinking_tokens > 0


def test_answer_keys_compare_by_value() -> None:
    assert answer_key("['B\\n']") == "b" and answer_key("A) Mars") == "a"
    assert answer_key("so the answer is 42.") == "42" and answer_key("#### 1,200") == "1200"
    assert answer_key("def f(x):\n    return sorted(x, key=len)") is None
    assert agree("['C']", "C\n") is True and agree("A", "B") is False and agree("A", None) is None


def _fake(texts: dict[str, list[str]], costs: dict[str, float], log: list[str]):
    async def call(model: str) -> Answer:
        log.append(model)
        return Answer(text=texts[model].pop(0), cost_usd=costs[model])

    return call


def test_cascade_accepts_on_agreement_and_escalates_on_disagreement(router: Router) -> None:
    prompt = MATH.format(a=2, b=2)
    costs = {"small": 0.001, "mid": 0.01, "big": 0.1}
    log: list[str] = []
    call = _fake({"small": ["4", "5"], "mid": ["4", "6"], "big": ["4"]}, costs, log)
    # λ = 0.1: small is the pick and a check by mid pays (at λ = 1 escalating would not: no check)
    agreed = asyncio.run(run_cascade(router, prompt, cands("small", "mid", "big"), call, cost_weight=0.1))
    assert agreed.model == "small" and [c.model for c in agreed.calls] == ["small", "mid"]
    assert agreed.cost_usd == pytest.approx(0.011)
    split = asyncio.run(run_cascade(router, prompt, cands("small", "mid", "big"), call, cost_weight=0.1))
    assert split.model == "big" and [c.model for c in split.calls] == ["small", "mid", "big"]
    assert split.cost_usd == pytest.approx(0.111) and "escalated" in split.reason


def test_cascade_uses_logprob_when_given(router: Router) -> None:
    async def call(model: str) -> Answer:
        return Answer(text="4", cost_usd=0.01, logprob=-2.0 if model == "small" else -0.01)

    out = asyncio.run(
        run_cascade(router, MATH.format(a=2, b=2), cands("small", "mid", "big"), call, cost_weight=1.0)
    )
    assert [c.model for c in out.calls] == ["small", "big"] and "logprob" in out.reason


def test_best_of_n_votes_and_pays_every_sample(router: Router) -> None:
    log: list[str] = []
    call = _fake({"small": ["7", "8", "7", "7", "9"]}, {"small": 1.0}, log)
    out = asyncio.run(run_best_of_n(router, CODE.format(a=1, b=1), cands("small"), call))
    assert out.decision.n == len(out.calls) == len(log) and out.decision.n >= 3
    assert out.answer.text == "7" and out.cost_usd == pytest.approx(out.decision.n)
    assert majority(
        [
            Answer(text="def first(x):\n    return x[0]"),
            Answer(text="def second(x):\n    return x[1]", logprob=-0.1),
        ]
    ) == (1, "highest logprob")


def test_bad_outcomes_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl.gz"
    good = {"prompt_id": "a", "task": "t", "prompt": "p", "model": "m", "score": 1.0}
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps(good) + "\n" + json.dumps({**good, "score": 1.5}) + "\n")
    with pytest.raises(OutcomesError) as info:
        train_router(load_outcomes(path))
    assert ":2:" in str(info.value) and info.value.field == "score"


def test_cascade_calls_the_checker_only_where_a_check_pays() -> None:
    from wattwise.routing.policies import CascadePolicy, Dial, Estimate, check_pays

    def est(name: str, q: float, c: float) -> Estimate:
        return Estimate(name=name, quality=q, cost_usd=c, out_tokens=10.0)

    # first 0.75, checker 0.7, top 0.9 at 10x the price: a disagreement (40%) often flags a wrong answer
    small, mid, big = est("small", 0.75, 0.1), est("mid", 0.7, 0.1), est("big", 0.9, 1.0)
    assert check_pays(small, mid, big, Dial(cost_weight=0.2), c_max=1.0)
    assert CascadePolicy().decide([small, mid, big], Dial(cost_weight=0.2)).steps == ("small", "mid", "big")
    # the same models where escalating costs more than the top model's edge: accept unchecked
    assert not check_pays(small, mid, big, Dial(cost_weight=0.3), c_max=1.0)
    plan = CascadePolicy().decide([small, mid, big], Dial(cost_weight=0.3))
    assert plan.steps == ("small", "big") and "would not pay" in plan.reason
    # a checker no better than a coin flip tells nothing: never worth a call
    coin = est("mid", 0.5, 0.1)
    assert not check_pays(small, coin, big, Dial(cost_weight=0.2), c_max=1.0)
