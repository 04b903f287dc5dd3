"""Executors for multi-call policies: they make the calls a cascade or best-of-N plans.

``call(model)`` is the gateway's (or a test's) coroutine that asks one configured model the request
and returns an :class:`Answer`; every call is paid for, so the result lists them all for metering.

Usage::

    async def call(model: str) -> Answer:
        ...
    result = await run_cascade(router, prompt, candidates, call)
    result.answer.text, result.model, [c.model for c in result.calls]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from wattwise.routing.answers import agree, answer_key
from wattwise.routing.policies import Candidate, RouteDecision
from wattwise.routing.router import Router

__all__ = [
    "Answer",
    "Call",
    "MultiCallResult",
    "agree",
    "answer_key",
    "majority",
    "run_best_of_n",
    "run_cascade",
]

LOGPROB_ACCEPT = -0.35  # mean token log-probability above which a cascade accepts the answer


@dataclass(frozen=True, kw_only=True)
class Answer:
    """One model's answer; ``logprob`` is the mean token log-probability where the backend gives it."""

    text: str
    cost_usd: float | None = None
    logprob: float | None = None


@dataclass(frozen=True, kw_only=True)
class Call:
    model: str
    answer: Answer


@dataclass(frozen=True, kw_only=True)
class MultiCallResult:
    """The answer kept, the model that gave it, every call made and why."""

    answer: Answer
    model: str
    calls: tuple[Call, ...]
    decision: RouteDecision
    reason: str

    @property
    def cost_usd(self) -> float | None:
        costs = [c.answer.cost_usd for c in self.calls]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)


CallFn = Callable[[str], Awaitable[Answer]]


async def run_cascade(
    router: Router,
    prompt: str,
    candidates: Sequence[Candidate],
    call: CallFn,
    *,
    quality_target: float | None = None,
    max_cost_usd: float | None = None,
    cost_weight: float | None = None,
) -> MultiCallResult:
    """Call the cheap model; accept on a good log-probability, or when a second cheap model agrees,
    or when the answer cannot be compared (format check only); else escalate to the top model."""
    decision = router.route(
        prompt,
        candidates,
        policy="cascade",
        quality_target=quality_target,
        max_cost_usd=max_cost_usd,
        cost_weight=cost_weight,
    )
    return await cascade_calls(decision, call)


async def cascade_calls(decision: RouteDecision, call: CallFn) -> MultiCallResult:
    """Carry out a cascade plan (``decision.steps`` = first, [checker,] top)."""
    steps = decision.steps or (decision.model,)
    first = steps[0]
    calls = [Call(model=first, answer=await call(first))]
    a = calls[0].answer

    def done(model: str, answer: Answer, why: str) -> MultiCallResult:
        return MultiCallResult(
            answer=answer,
            model=model,
            calls=tuple(calls),
            decision=decision,
            reason=f"{decision.reason}; {why}",
        )

    if len(steps) == 1:
        return done(first, a, "single model")
    if not a.text.strip():
        return await _escalate(steps[-1], calls, call, done, "empty answer")
    if a.logprob is not None:
        if a.logprob >= LOGPROB_ACCEPT:
            return done(first, a, f"accepted: logprob {a.logprob:.2f}")
        return await _escalate(steps[-1], calls, call, done, f"logprob {a.logprob:.2f} low")
    if answer_key(a.text) is None or len(steps) < 3:
        return done(first, a, "accepted: free-text answer passed the format check")
    checker = steps[1]
    calls.append(Call(model=checker, answer=await call(checker)))
    if agree(a.text, calls[-1].answer.text):
        return done(first, a, f"accepted: {checker} agrees")
    return await _escalate(steps[-1], calls, call, done, f"{checker} disagrees")


async def _escalate(
    top: str, calls: list[Call], call: CallFn, done: Callable[[str, Answer, str], MultiCallResult], why: str
) -> MultiCallResult:
    calls.append(Call(model=top, answer=await call(top)))
    return done(top, calls[-1].answer, f"escalated to {top}: {why}")


def majority(answers: Sequence[Answer]) -> tuple[int, str]:
    """Index of the answer to keep and how it was chosen: the most common comparable answer,
    else the highest log-probability, else the first."""
    keys = [answer_key(a.text) for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if counts:
        top, votes = counts.most_common(1)[0]
        return keys.index(top), f"majority {votes}/{len(answers)}"
    scored = [(a.logprob, i) for i, a in enumerate(answers) if a.logprob is not None]
    if scored:
        return max(scored)[1], "highest logprob"
    return 0, "answers do not compare: first kept"


async def run_best_of_n(
    router: Router,
    prompt: str,
    candidates: Sequence[Candidate],
    call: CallFn,
    *,
    quality_target: float | None = None,
    max_cost_usd: float | None = None,
    judge: Callable[[Sequence[Answer]], Awaitable[int]] | None = None,
) -> MultiCallResult:
    """N samples from the chosen model (N from predicted difficulty), then a vote or ``judge``."""
    decision = router.route(
        prompt, candidates, policy="best_of_n", quality_target=quality_target, max_cost_usd=max_cost_usd
    )
    return await best_of_n_calls(decision, call, judge=judge)


async def best_of_n_calls(decision: RouteDecision, call: CallFn,
                          judge: Callable[[Sequence[Answer]], Awaitable[int]] | None = None) -> MultiCallResult:
    """Carry out a best-of-N plan: ``decision.n`` answers of ``decision.model``, then a vote or ``judge``."""
    calls = [Call(model=decision.model, answer=await call(decision.model)) for _ in range(decision.n)]
    answers = [c.answer for c in calls]
    index, how = majority(answers)
    if judge is not None and not how.startswith("majority"):
        index, how = await judge(answers), "judge"
    return MultiCallResult(
        answer=answers[index],
        model=decision.model,
        calls=tuple(calls),
        decision=decision,
        reason=f"{decision.reason}; {how}",
    )
