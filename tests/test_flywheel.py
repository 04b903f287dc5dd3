"""The flywheel's core (plan, budget, judge, jobs, retrain) and its tables in the store."""

from __future__ import annotations

import asyncio
import json

import pytest

from wattwise.outcomes import Outcome
from wattwise.routing.flywheel import (
    DAY_S,
    AskResult,
    Judge,
    LabelBudget,
    LabelConfig,
    LabelJob,
    LabelPlan,
    LabelRow,
    ListSink,
    parse_score,
    retrain,
    router_version,
    run_job,
    split_by_time,
)
from wattwise.routing.train import train_router
from wattwise.store.labels import LabelStore, RouterRow
from wattwise.store.records import TraceRecord
from wattwise.store.sql import TraceStore


@pytest.mark.parametrize(("text", "score"), [
    ("Score: 7/10", 0.7), ("score: 8 out of 10", 0.8), ('{"score": 0.85}', 0.85), ("score = 7", 0.7),
    ("9", 0.9), ("0.4", 0.4), ("1.0", 1.0), ("Score: 1", 0.1), ("Rating: 10/10. Flawless.", 1.0),
    ("I cannot tell.", None), ("Score: 11/10", None), ("score: -3", None), ("", None), ("7/0", None),
])
def test_parse_score(text: str, score: float | None) -> None:
    assert parse_score(text) == score


def test_label_plan_is_seeded_and_shares_are_honoured() -> None:
    config = LabelConfig(judge_model="judge", judge_share=0.3, shadow_share=0.1, seed=7)
    plan = LabelPlan(config=config)

    def jobs(rid: str) -> list[LabelJob]:
        return plan.jobs(request_id=rid, prompt_id="p", prompt="hi", served_model="a", answer="x",
                         candidates=["a", "b", "c"], app="app")

    runs = [jobs(f"req_{i}") for i in range(4000)]
    assert runs[:50] == [jobs(f"req_{i}") for i in range(50)]  # the same request always draws alike
    judged = sum(1 for r in runs if r)
    shadowed = [r for r in runs if any(j.kind == "shadow" for j in r)]
    # A shadowed request is judged too: 1 - (1 - 0.3)(1 - 0.1) = 0.37 judged, 0.1 shadowed.
    assert 0.34 < judged / 4000 < 0.40 and 0.08 < len(shadowed) / 4000 < 0.12
    one = shadowed[0]
    assert [(j.kind, j.model, j.answer) for j in one] == [("judge", "a", "x"), ("shadow", "b", None),
                                                          ("shadow", "c", None)]
    assert all(j.app == "app" and j.prompt_id == "p" for j in one)
    other_seed = LabelPlan(config=LabelConfig(judge_model="judge", judge_share=0.3, shadow_share=0.1, seed=8))
    assert [bool(other_seed.jobs(request_id=f"req_{i}", prompt_id="p", prompt="hi", served_model="a",
                                 answer="x", candidates=["a"], app=None)) for i in range(200)] != \
        [bool(r) for r in runs[:200]]


def test_label_plan_without_a_judge_or_with_named_shadows() -> None:
    none = LabelPlan(config=LabelConfig(judge_model=None, judge_share=1.0, shadow_share=1.0))
    assert none.jobs(request_id="r", prompt_id="p", prompt="hi", served_model="a", answer="x",
                     candidates=["a", "b"], app=None) == []
    named = LabelPlan(config=LabelConfig(judge_model="j", shadow_share=1.0, shadow_models=("b", "a")))
    got = named.jobs(request_id="r", prompt_id="p", prompt="hi", served_model="a", answer="x",
                     candidates=["a", "b", "c"], app=None)
    assert [(j.kind, j.model) for j in got] == [("judge", "a"), ("shadow", "b")]
    assert LabelJob.from_json(json.loads(json.dumps(got[1].to_json()))) == got[1]


def test_label_budget_per_utc_day() -> None:
    budget = LabelBudget(usd_per_day=1.0, j_per_day=100.0)
    day = 20000 * DAY_S
    assert budget.allow(usd=0.5, joules=50.0, now=day)
    budget.spend(usd=0.7, joules=10.0, now=day + 5)
    assert not budget.allow(usd=0.5, joules=1.0, now=day + 6)  # dollars run out first
    assert budget.allow(usd=0.2, joules=1.0, now=day + 6)
    budget.spend(usd=0.0, joules=95.0, now=day + 7)
    assert not budget.allow(usd=0.0, joules=1.0, now=day + 8)  # then joules
    budget.spend(usd=None, joules=None, now=day + 9)
    assert budget.unknown == 1
    assert budget.left(now=day + 10) == (pytest.approx(0.3), 0.0)
    assert budget.allow(usd=0.9, joules=90.0, now=day + DAY_S)  # a new UTC day starts afresh
    assert budget.unknown == 0


def test_run_job_shadow_then_judge_and_unparseable_judgements() -> None:
    asked: list[tuple[str, str]] = []

    async def ask(model: str, prompt: str) -> AskResult:
        asked.append((model, prompt))
        if model == "judge":
            return AskResult(text="Score: 6/10" if "good" in prompt else "no idea", cost_usd=0.001)
        return AskResult(text="a good answer", cost_usd=0.01, energy_j=3.0)

    judge = Judge(model="judge", rubric="Q: {prompt}\nA: {answer}\nScore it.")
    shadow = LabelJob(kind="shadow", request_id="r", prompt_id="p", prompt="2+2?", model="big", answer=None,
                      app="app")
    rows = asyncio.run(run_job(shadow, ask=ask, judge=judge, now=lambda: 5.0))
    assert asked == [("big", "2+2?"), ("judge", "Q: 2+2?\nA: a good answer\nScore it.")]
    assert rows == [LabelRow(prompt_id="p", prompt="2+2?", model="big", score=0.6, cost_usd=0.01, energy_j=3.0,
                             source="shadow", ts=5.0, app="app", request_id="r")]
    served = LabelJob(kind="judge", request_id="r", prompt_id="p", prompt="2+2?", model="small", answer="bad",
                      app=None, cost_usd=0.0001)
    assert asyncio.run(run_job(served, ask=ask, judge=judge)) == []  # "no idea" is no label


def label(prompt_id: str, model: str, score: float, ts: float) -> LabelRow:
    return LabelRow(prompt_id=prompt_id, prompt=f"prompt {prompt_id}", model=model, score=score, cost_usd=None,
                    energy_j=None, source="judge", ts=ts)


def test_split_by_time_holds_out_whole_newest_prompts() -> None:
    rows = [label("a", "m", 1, 1.0), label("b", "m", 1, 2.0), label("a", "n", 1, 9.0), label("c", "m", 1, 3.0),
            label("d", "m", 1, 4.0), label("c", "n", 1, 5.0)]
    older, newest = split_by_time(rows, 0.5)
    assert {r.prompt_id for r in newest} == {"c", "d"} and {r.prompt_id for r in older} == {"a", "b"}
    assert len(older) + len(newest) == len(rows)  # "a" labelled late stays with its prompt


def shipped_rows() -> list[Outcome]:
    rows = []
    for i in range(60):
        for kind in ("chat", "math"):
            prompt = f"{kind}: question {i} about {kind} things"
            rows += [Outcome(prompt_id=f"{kind}{i}", task="t", prompt=prompt, model="small", score=0.9,
                             cost_usd=1e-5),
                     Outcome(prompt_id=f"{kind}{i}", task="t", prompt=prompt, model="big", score=0.95, cost_usd=1e-3)]
    return rows


def test_retrain_promotes_only_a_candidate_that_beats_the_serving_router() -> None:
    shipped = shipped_rows()
    serving = train_router(shipped)
    labels = []
    for i in range(100, 160):
        for kind, small in (("chat", 0.85), ("math", 0.1)):
            prompt = f"{kind}: question {i} about {kind} things"
            labels += [LabelRow(prompt_id=f"{kind}{i}", prompt=prompt, model="small", score=small, cost_usd=1e-5,
                                energy_j=None, source="judge", ts=float(i)),
                       LabelRow(prompt_id=f"{kind}{i}", prompt=prompt, model="big", score=0.95, cost_usd=1e-3,
                                energy_j=None, source="shadow", ts=float(i))]
    promotion = retrain(serving=serving, labels=labels, shipped=shipped, holdout_share=0.25)
    assert promotion.promoted and promotion.candidate_score > promotion.serving_score + 0.05, promotion.detail
    assert promotion.holdout_rows == 60 and promotion.train_rows == len(shipped) + 180
    assert router_version(promotion.candidate) != router_version(serving)
    # Labels that agree with the shipped data give the candidate nothing to win on.
    agreeing = [LabelRow(**{**vars(r), "score": 0.9 if r.model == "small" else 0.95}) for r in labels]
    same = retrain(serving=serving, labels=agreeing, shipped=shipped, holdout_share=0.25, min_gain=0.01)
    assert not same.promoted, same.detail
    few = retrain(serving=serving, labels=labels[:4], shipped=shipped, holdout_share=0.25, min_holdout=20)
    assert not few.promoted and "fewer than 20" in few.detail


def test_retrain_maps_gateway_names_to_the_names_the_router_knows() -> None:
    shipped = shipped_rows()
    seen: list[set[str]] = []

    def train(rows: object) -> object:
        seen.append({r.model for r in rows})  # type: ignore[attr-defined]
        return train_router(rows)  # type: ignore[arg-type]

    labels = [label(f"x{i}", "cheap", 0.2, float(i)) for i in range(10)]
    retrain(serving=train_router(shipped), labels=labels, shipped=shipped, holdout_share=0.2,
            aliases={"cheap": "small"}, train=train)  # type: ignore[arg-type]
    assert seen == [{"small", "big"}]


def test_list_sink_collects() -> None:
    sink = ListSink()
    sink.add(label("a", "m", 0.5, 1.0))
    assert [r.prompt_id for r in sink.rows] == ["a"]


# -- the store ---------------------------------------------------------------------------------


def job(i: int) -> LabelJob:
    return LabelJob(kind="judge", request_id=f"r{i}", prompt_id=f"p{i}", prompt=f"prompt {i}", model="m",
                    answer="x\x00y\udc00", app=None)


def test_label_jobs_lease_and_fence(store: TraceStore) -> None:
    queue = LabelStore(store=store)
    queue.add_jobs([job(i) for i in range(3)], now=1.0)
    first = queue.claim(owner="a", limit=2, lease_s=10, now=2.0)
    assert [c.job.request_id for c in first] == ["r0", "r1"] and first[0].job.answer == "x\x00y\ufffd"
    assert [c.job.request_id for c in queue.claim(owner="b", limit=5, lease_s=20, now=3.0)] == ["r2"]
    assert queue.claim(owner="b", limit=5, lease_s=10, now=4.0) == []
    queue.heartbeat(first[:1], owner="a", lease_until=30.0)
    # a's lease on r1 lapsed (not renewed): b takes it over; a's late result is fenced out.
    taken = queue.claim(owner="b", limit=5, lease_s=10, now=15.0)
    assert [(c.job.request_id, c.attempt) for c in taken] == [("r1", 2)]
    row = label("p1", "m", 0.5, 16.0)
    assert not queue.finish(first[1], owner="a", rows=[row], error=None, now=16.0)
    assert queue.finish(taken[0], owner="b", rows=[row], error=None, now=17.0)
    assert queue.finish(first[0], owner="a", rows=[], error="UpstreamError: boom", now=18.0)
    assert queue.labels() == [row]  # once, from the claim that held the job
    assert queue.counts() == {"done": 1, "failed": 1, "running": 1}
    assert queue.release(owner="b") == 1 and queue.counts()["pending"] == 1
    assert queue.count() == 1 and queue.count(since=17.0) == 0
    assert queue.purge(before=17.5) == 1 and queue.counts() == {"failed": 1, "pending": 1}
    assert queue.labels() == [row]  # a purged job's labels stay


def test_labels_include_feedback_on_served_requests(store: TraceStore) -> None:
    queue = LabelStore(store=store)
    messages = json.dumps([{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}])
    store.insert([
        TraceRecord(id="served", ts=10.0, requested_model="auto", model="small", messages=messages,
                    prompt_hash="h1", cost_usd=0.001, energy_j=2.0, tag="app-1"),
        TraceRecord(id="judged", ts=11.0, requested_model="judge", model="judge", messages=messages,
                    tag="label:judge", cost_usd=0.002, energy_j=1.0),
        TraceRecord(id="no-content", ts=12.0, requested_model="auto", model="small"),
    ])
    for rid in ("served", "judged", "no-content"):
        store.set_score(rid, 0.75)
    queue.add(label("h1", "big", 0.9, 5.0))
    got = queue.labels()
    assert [(r.source, r.model, r.ts) for r in got] == [("judge", "big", 5.0), ("feedback", "small", 10.0)]
    fb = got[1]
    assert (fb.prompt_id, fb.prompt, fb.score, fb.cost_usd, fb.app, fb.request_id) == \
        ("h1", "be brief\n2+2?", 0.75, 0.001, "app-1", "served")
    assert queue.spent(since=0.0) == (0.002, 1.0)  # only the flywheel's own calls count
    assert queue.labels(feedback=False, since=6.0) == []


def test_routers_table(store: TraceStore) -> None:
    queue = LabelStore(store=store)
    assert queue.latest_promoted() is None
    for version, at, promoted in (("v1", 1.0, True), ("v2", 2.0, False), ("v3", 3.0, True), ("v4", 4.0, False)):
        queue.add_router(RouterRow(version=version, created_at=at, promoted=promoted, serving_score=float("nan"),
                                   candidate_score=0.5, detail="d", body="{}"))
    latest = queue.latest_promoted()
    assert latest is not None and latest.version == "v3" and latest.serving_score is None
    assert [r.version for r in queue.routers()] == ["v1", "v2", "v3", "v4"]
