"""The joint quality/length models, the prompt embedder, priors for new models, versions, config keys."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from test_routing_router import CODE, MATH, synthetic
from wattwise.config import parse_config
from wattwise.outcomes import Outcome
from wattwise.routing.adapter import candidates_from
from wattwise.routing.embed import Embedder
from wattwise.routing.irt import JointModel, Penalties
from wattwise.routing.predictors import Known, prior_bias
from wattwise.routing.router import Candidate, Router
from wattwise.routing.train import train_router


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load(memo=True)


@pytest.fixture(scope="module")
def router(embedder: Embedder) -> Router:
    return train_router(synthetic(160), embedder=embedder)


def test_embedder_reads_the_package_weights_and_is_deterministic(embedder: Embedder) -> None:
    a, b = embedder.embed("What is 2+2?"), embedder.embed("What is 2+2?")
    assert a.shape == (embedder.dim,) == (512,) and np.array_equal(a, b)
    assert np.linalg.norm(a[:256]) == pytest.approx(1.0, abs=1e-5)
    near = embedder.embed("What is 3+3?") @ a
    far = embedder.embed("def reverse(items):\n    return items[::-1]") @ a
    assert near > far


def test_embedding_cost_is_bounded_for_long_prompts() -> None:
    fresh = Embedder.load()
    long = "the cost of energy per token " * 20000  # ~600k characters
    fresh.embed(long)
    started = time.perf_counter()
    fresh.embed(long)
    assert time.perf_counter() - started < 0.05  # only head, tail and last part are tokenised


def _irt_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores from a true item-response model: easiness x·s, abilities b; model 'c' has few rows."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(600, 6))
    s = np.array([1.5, -1.0, 0.0, 0.0, 0.5, 0.0])
    b = np.array([1.0, -0.5, 0.3])
    p = 1 / (1 + np.exp(-(X @ s)[:, None] - b))
    Y = (rng.random(p.shape) < p).astype(float)
    W = np.ones_like(Y)
    W[30:, 2] = 0.0  # model 'c' answered only 30 prompts
    return X, Y, W, p


def test_joint_model_shares_difficulty_with_a_model_that_has_little_data() -> None:
    X, Y, W, p = _irt_data()
    model = JointModel.fit(X, Y, W, names=["a", "b", "c"], penalties=Penalties(shared=1e-3, residual=0.05))
    pred = model.predict(X)
    # 'c' saw 30 prompts, yet ranks the other 570 nearly as well as the truth (difficulty is shared)
    corr = np.corrcoef(pred[30:, 2], p[30:, 2])[0, 1]
    assert corr > 0.9
    # calibrated: mean prediction matches the mean score for the data-rich models
    assert abs(pred[:, 0].mean() - Y[:, 0].mean()) < 0.02
    again = JointModel.from_json(model.to_json())
    assert np.allclose(again.predict(X), pred, atol=1e-3)


def test_low_rank_skills_fit_and_round_trip() -> None:
    X, Y, W, _ = _irt_data(1)
    model = JointModel.fit(X, Y, W, names=["a", "b", "c"], rank=2)
    assert model.skills.shape == (3, 2) and model.basis.shape == (6, 2)
    assert np.allclose(JointModel.from_json(model.to_json()).predict(X), model.predict(X), atol=1e-3)


def test_length_model_predicts_longer_outputs_where_they_were_longer(router: Router) -> None:
    # synthetic(): code answers are multi-line functions, math answers a number
    code = router.estimate(CODE.format(a=3, b=4), [Candidate(name="big", input_usd_per_mtok=1,
                                                             output_usd_per_mtok=1)])[0]
    math = router.estimate(MATH.format(a=3, b=4), [Candidate(name="big", input_usd_per_mtok=1,
                                                             output_usd_per_mtok=1)])[0]
    assert code.out_tokens > 3 * math.out_tokens


def test_prior_prefers_rating_then_size_then_price() -> None:
    known = [
        Known(ability=-1.0, cost=0.001, rating=1000, params_b=7, family="small"),
        Known(ability=2.0, cost=0.1, rating=1250, params_b=1000, family="big"),
    ]
    by_rating, how = prior_bias(known, cost=0.001, rating=1240)
    assert how == "rating" and by_rating > 1.5  # rated like 'big' though priced like 'small'
    by_size, how = prior_bias(known, cost=0.001, params_b=700)
    assert how == "size" and by_size > 1.0
    by_price, how = prior_bias(known, cost=0.09)
    assert how == "price" and by_price > 1.5
    by_family, how = prior_bias(known, cost=None, family="small")
    assert how == "family" and by_family == -1.0
    assert prior_bias(known, cost=None) == (0.5, "median")


def test_router_prior_uses_config_rating(router: Router) -> None:
    base = [Candidate(name=n, input_usd_per_mtok=p, output_usd_per_mtok=p, rating=r)
            for n, p, r in (("small", 0.1, 1000.0), ("big", 10.0, 1250.0))]
    rated = Candidate(name="fresh", input_usd_per_mtok=0.1, output_usd_per_mtok=0.1, rating=1250.0)
    unrated = Candidate(name="fresh", input_usd_per_mtok=0.1, output_usd_per_mtok=0.1)
    prompt = CODE.format(a=1, b=1)
    with_rating = {e.name: e for e in router.estimate(prompt, [*base, rated])}
    by_price = {e.name: e for e in router.estimate(prompt, [*base, unrated])}
    assert with_rating["fresh"].prior and not with_rating["big"].prior
    # rated like 'big' though priced like 'small': expected to answer nearer 'big' than 'small'
    fresh = with_rating["fresh"].quality
    assert abs(fresh - with_rating["big"].quality) < abs(fresh - with_rating["small"].quality)
    assert fresh > by_price["fresh"].quality + 0.1
    assert abs(by_price["fresh"].quality - by_price["small"].quality) < abs(
        by_price["fresh"].quality - by_price["big"].quality
    )


def test_data_replaces_the_prior_as_it_arrives(embedder: Embedder) -> None:
    rows = synthetic(160)
    rng = random.Random(3)
    # 'fresh' is good at code only; it answered 40 prompts
    for r in rows[: 3 * 40 : 3]:
        good = rng.random() < (0.9 if "python" in r.prompt else 0.2)
        rows.append(Outcome(prompt_id=r.prompt_id, task=r.task, prompt=r.prompt, model="fresh",
                            score=float(good), cost_usd=1e-6))
    trained = train_router(rows, embedder=embedder)
    assert "fresh" in trained.models()
    c = [Candidate(name="fresh", input_usd_per_mtok=1, output_usd_per_mtok=1)]
    code = trained.estimate(CODE.format(a=2, b=2), c)[0]
    math = trained.estimate(MATH.format(a=2, b=2), c)[0]
    assert not code.prior and code.quality > math.quality + 0.2


def test_mixed_files_and_repeated_answers_train(embedder: Embedder) -> None:
    rows = synthetic(60)
    other = [Outcome(prompt_id=f"o{i}", task="other", prompt=f"Name a colour number {i}.", model=m,
                     score=float((i + k) % 3 != 0), cost_usd=1e-5 * (k + 1))
             for i in range(40) for k, m in enumerate(("x", "y"))]
    repeat = [Outcome(prompt_id="o1", task="other", prompt="Name a colour number 1.", model="x", score=0.0)]
    started = time.perf_counter()
    trained = train_router([*rows, *other, *repeat], embedder=embedder)
    assert time.perf_counter() - started < 60
    assert trained.models() == ["big", "mid", "small", "x", "y"]
    assert trained.meta["rows"] == len(rows) + len(other) + 1
    assert trained.cost_weight >= 0


def test_retrain_can_reuse_the_chosen_penalty(router: Router, embedder: Embedder) -> None:
    assert router.penalty is not None and router.bank.tuning["platt"][0] > 0
    again = train_router(synthetic(160), embedder=embedder, penalty=router.penalty)
    assert again.penalty == router.penalty
    prompt = CODE.format(a=4, b=4)
    c = [Candidate(name=m, input_usd_per_mtok=1, output_usd_per_mtok=1) for m in ("small", "big")]
    before = [e.quality for e in router.estimate(prompt, c)]
    assert [e.quality for e in again.estimate(prompt, c)] == pytest.approx(before, abs=0.02)


def test_version_is_a_content_hash(router: Router, embedder: Embedder) -> None:
    again = Router.from_json(router.to_json(), embedder=embedder)
    assert again.version == router.version
    changed = router.to_json()
    changed["cost_weight"] = router.cost_weight + 1.0
    assert Router.from_json(changed, embedder=embedder).version != router.version


def test_config_keys_reach_the_candidates() -> None:
    config = parse_config(
        """
[models.fresh]
backend = "mock"
params_b = 8
family = "llama"
rating = 1150
"""
    )
    cand = {c.name: c for c in candidates_from(config)}["fresh"]
    assert (cand.params_b, cand.family, cand.rating) == (8.0, "llama", 1150.0)
