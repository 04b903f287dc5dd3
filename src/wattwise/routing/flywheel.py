"""The flywheel's core: which served requests get labelled, the labelling budget, the judge, and a
retrain that promotes a candidate router only when it beats the serving one on the newest labels.

Everything here is pure or takes its I/O as an argument (``ask``), so the gateway's label runner,
``wattwise train --store`` and ``wattwise flywheel-sim`` share it:

- :class:`LabelPlan` (seeded) turns one served request into :class:`LabelJob` s: judge the served
  answer, and for a shadowed prompt ask other candidate models too (then judge their answers).
- :class:`LabelBudget` caps what labelling spends, in $ and J per UTC day.
- :class:`Judge` writes the rubric prompt and parses a 0..1 score from the judge model's answer;
  an answer it cannot parse yields no label.
- :func:`run_job` runs one job through ``ask(model, prompt)`` and returns its :class:`LabelRow` s.
- :func:`retrain` trains a candidate on the shipped outcomes plus the older labels and compares it
  with the serving router on the newest labels (a time-ordered hold-out): :class:`Promotion`.

Usage::

    plan = LabelPlan(config=LabelConfig(judge_model="big", judge_share=0.1, shadow_share=0.05))
    jobs = plan.jobs(request_id="req_1", prompt_id="ab12", prompt="2+2?", served_model="small",
                     answer="4", candidates=["small", "big"], app=None)
    rows = [row for job in jobs for row in await run_job(job, ask=ask, judge=Judge(model="big"))]
    promotion = retrain(serving=Router.default(), labels=rows, shipped=load_outcomes(path),
                        holdout_share=0.2)
    if promotion.promoted:
        picker.swap(promotion.candidate)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from wattwise.outcomes import Outcome
from wattwise.routing.policies import Candidate
from wattwise.routing.router import Router

SOURCES = ("judge", "shadow", "feedback")
KINDS = ("judge", "shadow")
DAY_S = 86400.0


@dataclass(frozen=True, kw_only=True)
class LabelRow:
    """One model's judged (or rated) result on one prompt: a training row for the router.

    ``cost_usd`` / ``energy_j`` are what the labelled model's answer cost (not the judge's call).

    Usage::

        LabelRow(prompt_id="ab12", prompt="2+2?", model="small", score=0.9, cost_usd=1e-5,
                 energy_j=0.4, source="judge", ts=time.time())
    """

    prompt_id: str
    prompt: str
    model: str
    score: float
    cost_usd: float | None
    energy_j: float | None
    source: str  # "judge" | "shadow" | "feedback"
    ts: float
    app: str | None = None
    request_id: str | None = None

    def outcome(self, *, model: str | None = None) -> Outcome:
        """This label as an outcomes row (``model`` renames it, e.g. to the name the router knows)."""
        return Outcome(prompt_id=self.prompt_id, task=f"label:{self.source}", prompt=self.prompt,
                       model=model or self.model, score=self.score, cost_usd=self.cost_usd)


class LabelSink(Protocol):
    """Where labels go (the store's label table, a list in a test or the simulator)."""

    def add(self, row: LabelRow) -> None: ...


class ListSink:
    """A :class:`LabelSink` that keeps rows in a list.

    Usage::

        sink = ListSink(); sink.add(row); sink.rows
    """

    def __init__(self) -> None:
        self.rows: list[LabelRow] = []

    def add(self, row: LabelRow) -> None:
        self.rows.append(row)


@dataclass(frozen=True, kw_only=True)
class LabelConfig:
    """How much traffic is labelled, how, within what daily budget, and when to retrain.

    ``shadow_models`` None means every other candidate; ``retrain_every`` is a count of new labels
    (0: never on a count). ``min_gain`` is how much the candidate's hold-out score must exceed the
    serving router's, ``min_holdout`` the fewest hold-out labels a comparison may rest on.

    Usage::

        LabelConfig(judge_model="big", judge_share=0.1, shadow_share=0.05, budget_usd_per_day=5.0)
    """

    judge_model: str | None = None
    judge_share: float = 0.0
    shadow_share: float = 0.0
    shadow_models: tuple[str, ...] | None = None
    budget_usd_per_day: float = 1.0
    budget_j_per_day: float = 1e6
    retrain_every: int = 500
    holdout_share: float = 0.2
    min_gain: float = 0.0
    min_holdout: int = 20
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class LabelJob:
    """One deferred labelling task: judge a served answer, or ask ``model`` (a shadow) then judge it.

    ``cost_usd`` / ``energy_j`` carry the served answer's cost into a judge job's label.

    Usage::

        LabelJob(kind="shadow", request_id="req_1", prompt_id="ab12", prompt="2+2?", model="big",
                 answer=None, app=None)
    """

    kind: str  # "judge" | "shadow"
    request_id: str
    prompt_id: str
    prompt: str
    model: str
    answer: str | None
    app: str | None
    cost_usd: float | None = None
    energy_j: float | None = None

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in JOB_FIELDS}

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> LabelJob:
        return cls(**{name: obj.get(name) for name in JOB_FIELDS})  # type: ignore[arg-type]


JOB_FIELDS = ("kind", "request_id", "prompt_id", "prompt", "model", "answer", "app", "cost_usd", "energy_j")


def prompt_id_of(prompt: str) -> str:
    """The id labels share for one prompt text: the trace row's ``prompt_hash`` (sha256, 32 hex)."""
    return hashlib.sha256(prompt.encode(errors="replace")).hexdigest()[:32]


def _uniform(seed: int, *parts: str) -> float:
    """A deterministic draw in [0, 1) from the seed and the parts (the same request, the same draw)."""
    digest = hashlib.sha256("\x1f".join([str(seed), *parts]).encode(errors="replace")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class LabelPlan:
    """Which label jobs one served request gets; pure and seeded (a request id always draws alike).

    A shadowed request is judged too, so the store holds several models' judged answers to the
    same prompt. With no judge model there is nothing to score answers with: no jobs.

    Usage::

        plan = LabelPlan(config=LabelConfig(judge_model="big", judge_share=0.1, shadow_share=0.05))
        plan.jobs(request_id="req_1", prompt_id="ab12", prompt="2+2?", served_model="small",
                  answer="4", candidates=["small", "big"], app=None)
    """

    def __init__(self, *, config: LabelConfig) -> None:
        self.config = config

    def jobs(self, *, request_id: str, prompt_id: str, prompt: str, served_model: str, answer: str,
             candidates: Sequence[str], app: str | None, cost_usd: float | None = None,
             energy_j: float | None = None) -> list[LabelJob]:
        c = self.config
        if c.judge_model is None or not prompt:
            return []
        shadow = _uniform(c.seed, "shadow", request_id) < c.shadow_share
        judged = shadow or _uniform(c.seed, "judge", request_id) < c.judge_share
        if not judged:
            return []
        job = partial(LabelJob, request_id=request_id, prompt_id=prompt_id, prompt=prompt, app=app)
        out = [job(kind="judge", model=served_model, answer=answer, cost_usd=cost_usd, energy_j=energy_j)]
        if shadow:
            pool = c.shadow_models if c.shadow_models is not None else tuple(candidates)
            out += [job(kind="shadow", model=m, answer=None) for m in pool if m != served_model]
        return out


class LabelBudget:
    """What labelling may spend per UTC day, in dollars and joules; in memory, one per replica.

    A call whose cost is unknown spends nothing it cannot name: it is counted in ``unknown``.

    Usage::

        budget = LabelBudget(usd_per_day=5.0, j_per_day=2e6)
        if budget.allow(usd=0.001, joules=50.0, now=time.time()):
            ...; budget.spend(usd=0.0012, joules=61.0, now=time.time())
    """

    def __init__(self, *, usd_per_day: float, j_per_day: float) -> None:
        self.usd_per_day = usd_per_day
        self.j_per_day = j_per_day
        self.day = -1
        self.usd = 0.0
        self.joules = 0.0
        self.unknown = 0

    def _roll(self, now: float) -> None:
        day = int(now // DAY_S)
        if day != self.day:
            self.day, self.usd, self.joules, self.unknown = day, 0.0, 0.0, 0

    def allow(self, *, usd: float, joules: float, now: float) -> bool:
        """Whether a call expected to cost ``usd`` and ``joules`` still fits today's budget."""
        self._roll(now)
        return self.usd + usd <= self.usd_per_day and self.joules + joules <= self.j_per_day

    def spend(self, *, usd: float | None, joules: float | None, now: float) -> None:
        self._roll(now)
        if usd is None or joules is None:
            self.unknown += 1
        self.usd += usd or 0.0
        self.joules += joules or 0.0

    def left(self, *, now: float) -> tuple[float, float]:
        """``(usd, joules)`` left today."""
        self._roll(now)
        return max(0.0, self.usd_per_day - self.usd), max(0.0, self.j_per_day - self.joules)


@dataclass(frozen=True, kw_only=True)
class AskResult:
    """One metered call's answer as the flywheel sees it (the trace row holds the rest)."""

    text: str
    cost_usd: float | None = None
    energy_j: float | None = None
    request_id: str | None = None


Ask = Callable[[str, str], Awaitable[AskResult]]

DEFAULT_RUBRIC = (
    "You are grading an AI assistant's answer to a user's request. Judge correctness first, then "
    "helpfulness and clarity. Reply with one line of the form 'Score: N/10' (N from 0 to 10) and "
    "nothing else.\n\n[Request]\n{prompt}\n\n[Answer]\n{answer}\n"
)

_RATIO = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_LABELLED = re.compile(r"(?:score|rating|grade)\s*[\"']?\s*[:=]\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*\.?\s*")


def parse_score(text: str, *, scale: float = 10.0) -> float | None:
    """A 0..1 score from a judge's reply, or None when it gives none that is unambiguous.

    Understands ``Score: 7/10``, ``8 out of 10``, ``{"score": 0.8}``, ``score = 7`` and a bare
    number; a bare or labelled number is read on ``scale`` (0..1 when it is at most 1).

    >>> parse_score("Score: 7/10"), parse_score('{"score": 0.85}'), parse_score("I cannot tell")
    (0.7, 0.85, None)
    """
    if m := _RATIO.search(text):
        num, den = float(m.group(1)), float(m.group(2))
        return _in_range(num / den) if den > 0 else None
    if m := _LABELLED.search(text):
        return _scaled(m.group(1), scale)
    if m := _NUMBER.fullmatch(text):
        return _scaled(m.group(1), scale)
    return None


def _scaled(raw: str, scale: float) -> float | None:
    """A fraction written as one (``0.85``) is already 0..1; a whole number (``7``) is on ``scale``."""
    value = float(raw)
    return _in_range(value if "." in raw and value <= 1.0 else value / scale)


def _in_range(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) and 0.0 <= value <= 1.0 else None


class Judge:
    """An LLM judge: a configured model and a rubric with ``{prompt}`` and ``{answer}`` slots.

    Usage::

        judge = Judge(model="big")
        score, spent = await judge.score(ask, prompt="2+2?", answer="4")   # (0.9, AskResult(...))
    """

    def __init__(self, *, model: str, rubric: str = DEFAULT_RUBRIC, scale: float = 10.0) -> None:
        self.model = model
        self.rubric = rubric
        self.scale = scale

    def prompt_for(self, *, prompt: str, answer: str) -> str:
        return self.rubric.replace("{prompt}", prompt).replace("{answer}", answer)

    def parse(self, text: str) -> float | None:
        return parse_score(text, scale=self.scale)

    async def score(self, ask: Ask, *, prompt: str, answer: str) -> tuple[float | None, AskResult]:
        got = await ask(self.model, self.prompt_for(prompt=prompt, answer=answer))
        return self.parse(got.text), got


async def run_job(job: LabelJob, *, ask: Ask, judge: Judge, now: Callable[[], float] = time.time) -> list[LabelRow]:
    """Run one label job; its labels (none when the judge's answer has no score).

    A shadow job asks ``job.model`` the prompt, then has the judge score that answer; a judge job
    scores the served answer. Every ``ask`` is a metered, traced gateway call.
    """
    answer, cost, energy = job.answer, job.cost_usd, job.energy_j
    if job.kind == "shadow":
        got = await ask(job.model, job.prompt)
        answer, cost, energy = got.text, got.cost_usd, got.energy_j
    score, _ = await judge.score(ask, prompt=job.prompt, answer=answer or "")
    if score is None:
        return []
    return [LabelRow(prompt_id=job.prompt_id, prompt=job.prompt, model=job.model, score=score, cost_usd=cost,
                     energy_j=energy, source=job.kind, ts=now(), app=job.app, request_id=job.request_id)]


# -- retrain and promote ------------------------------------------------------------------------


@dataclass(kw_only=True)
class Promotion:
    """A retrain's result: the candidate, whether it beat the serving router, by what, and why.

    Scores are ``1 - Brier`` of predicted quality against the held-out labels (higher is better).
    """

    candidate: Router
    promoted: bool
    serving_score: float
    candidate_score: float
    detail: str
    train_rows: int = 0
    holdout_rows: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def router_version(router: Router) -> str:
    """The router's short content hash: ``Router.version`` where the router has one, else ours."""
    version = getattr(router, "version", None)
    if isinstance(version, str) and version:
        return version
    text = json.dumps(router.to_json(), separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def split_by_time(labels: Sequence[LabelRow], holdout_share: float) -> tuple[list[LabelRow], list[LabelRow]]:
    """``(older, newest)``: whole prompts, by the time their first label came, newest ``holdout_share``
    of prompts held out (a prompt is never on both sides)."""
    first: dict[str, float] = {}
    for row in labels:
        first[row.prompt_id] = min(row.ts, first.get(row.prompt_id, row.ts))
    order = sorted(first, key=lambda p: (first[p], p))
    n_hold = math.ceil(len(order) * holdout_share) if holdout_share > 0 else 0
    held = set(order[len(order) - n_hold:])
    return [r for r in labels if r.prompt_id not in held], [r for r in labels if r.prompt_id in held]


def holdout_score(router: Router, rows: Sequence[LabelRow], *, aliases: Mapping[str, str]) -> float:
    """``1 - mean((predicted quality - label)^2)`` over the rows, each model as the router knows it."""
    if not rows:
        return float("nan")
    errors = []
    by_prompt: dict[str, list[LabelRow]] = {}
    for row in rows:
        by_prompt.setdefault(row.prompt_id, []).append(row)
    for group in by_prompt.values():
        cands = [Candidate(name=r.model, input_usd_per_mtok=None, output_usd_per_mtok=None,
                           trained_as=aliases.get(r.model)) for r in group]
        unique = list({c.name: c for c in cands}.values())
        predicted = {e.name: e.quality for e in router.estimate(group[0].prompt, unique)}
        errors += [(predicted[r.model] - r.score) ** 2 for r in group]
    return 1.0 - sum(errors) / len(errors)


Train = Callable[[Sequence[Outcome]], Router]


def _default_train(rows: Sequence[Outcome]) -> Router:
    from wattwise.routing.train import train_router

    return train_router(rows)


def retrain(*, serving: Router, labels: Sequence[LabelRow], shipped: Sequence[Outcome], holdout_share: float,
            aliases: Mapping[str, str] | None = None, min_gain: float = 0.0, min_holdout: int = 1,
            train: Train | None = None) -> Promotion:
    """Train a candidate on ``shipped`` plus the older labels; promote it if it beats ``serving`` on the
    newest labels by more than ``min_gain``.

    ``aliases`` maps a gateway model name to the name the router's training data uses (a config's
    ``trained_as``), so labels add to that model's head. ``train`` is
    :func:`wattwise.routing.train.train_router` unless given.
    """
    aliases = dict(aliases or {})
    older, newest = split_by_time(labels, holdout_share)
    rows = [*shipped, *(r.outcome(model=aliases.get(r.model)) for r in older)]
    candidate = (train or _default_train)(rows)
    if len(newest) < max(1, min_holdout):
        return Promotion(candidate=candidate, promoted=False, serving_score=float("nan"),
                         candidate_score=float("nan"), train_rows=len(rows), holdout_rows=len(newest),
                         detail=f"not promoted: {len(newest)} held-out labels, fewer than {max(1, min_holdout)}")
    serving_score = holdout_score(serving, newest, aliases=aliases)
    candidate_score = holdout_score(candidate, newest, aliases=aliases)
    promoted = candidate_score > serving_score + min_gain
    verdict = "promoted" if promoted else "not promoted"
    detail = (f"{verdict}: hold-out 1-Brier {candidate_score:.4f} (candidate) vs {serving_score:.4f} (serving) "
              f"on the newest {len(newest)} labels; trained on {len(rows)} rows")
    return Promotion(candidate=candidate, promoted=promoted, serving_score=serving_score,
                     candidate_score=candidate_score, detail=detail, train_rows=len(rows),
                     holdout_rows=len(newest))
