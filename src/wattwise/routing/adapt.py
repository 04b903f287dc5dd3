"""Per-application adaptation: learn, per application, how good each model really is for its traffic.

Traffic is dominated by a few applications (a system prompt, a caller tag, a key). The prompt-level
router predicts each candidate's quality from the prompt alone; :class:`AppPosterior` keeps, per
(application, model), the count and sum of judged scores that labels brought in, and moves the
router's prediction toward that mean as data arrives (shrinkage, a Beta posterior whose prior is the
router's own prediction with weight ``strength``)::

    q' = (k · q_router + Σ scores) / (k + n)

With no labels the router's estimate stands; after ``n >> k`` labels the application's measured mean
replaces it. It is a ``LabelSink`` (``add(row)``) so the flywheel's labeller feeds it directly.

Usage::

    posterior = AppPosterior(strength=20)
    posterior.observe("support-bot", "small", 1.0)
    estimates = posterior.adjust("support-bot", router.estimate(prompt, candidates))
    decision = router.decide(estimates, quality_target=0.95)
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from wattwise.exceptions import InvalidRequest
from wattwise.routing.policies import Estimate

if TYPE_CHECKING:
    from wattwise.request import ChatBody

__all__ = ["AppPosterior", "Cell", "StreamDial", "app_key"]


class _Labelled(Protocol):
    """What :meth:`AppPosterior.add` reads of a label row (the flywheel's ``LabelRow``)."""

    @property
    def app(self) -> str | None: ...

    @property
    def model(self) -> str: ...

    @property
    def score(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Cell:
    """Labels seen for one (application, model): how many and their summed score."""

    n: float = 0.0
    total: float = 0.0

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n > 0 else None

    def shrink(self, prior: float, strength: float, z: float = 0.0) -> float:
        """The posterior mean with ``prior`` worth ``strength`` pseudo-observations, less ``z`` of its
        standard errors (``z > 0``: a lower bound, so a lucky streak of few labels does not win)."""
        mean = (strength * prior + self.total) / (strength + self.n)
        if z == 0.0:
            return mean
        return max(0.0, mean - z * math.sqrt(max(mean * (1.0 - mean), 0.01) / (strength + self.n)))


class AppPosterior:
    """Per-(application, model) judged scores, shrunk toward the router's prompt-level prediction.

    ``strength`` is the prior's weight in labels; ``max_apps`` bounds memory (least recently observed
    applications are forgotten first); ``decay`` (0..1, optional) discounts old labels at each new one
    of the same cell, so a model that changes is re-learned; ``pessimism`` z makes :meth:`adjust` give
    the mean less z standard errors (selection among noisy estimates favours the lucky). Thread-safe:
    the gateway observes from its label writer and adjusts from request handlers.

    Usage::

        post = AppPosterior(strength=20)
        post.observe("app-a", "mixtral", 0.0)
        post.quality("app-a", "mixtral", prior=0.8)    # -> 0.7619...
    """

    def __init__(self, *, strength: float = 20.0, max_apps: int = 10_000, decay: float | None = None,
                 pessimism: float = 0.0) -> None:
        if not strength > 0:
            raise InvalidRequest(f"strength must be > 0, got {strength!r}", param="strength")
        if decay is not None and not 0.0 < decay <= 1.0:
            raise InvalidRequest(f"decay must be in (0, 1], got {decay!r}", param="decay")
        self.strength = float(strength)
        self.pessimism = float(pessimism)
        self.max_apps = max_apps
        self.decay = decay
        self._cells: OrderedDict[str, dict[str, Cell]] = OrderedDict()
        self._lock = threading.Lock()

    # -- learning ------------------------------------------------------------------------------

    def observe(self, app: str, model: str, score: float) -> None:
        """One judged score (0..1) of ``model`` on a request of ``app``."""
        if not 0.0 <= score <= 1.0:
            raise InvalidRequest(f"score must be in 0..1, got {score!r}", param="score")
        with self._lock:
            per = self._cells.pop(app, None) or {}
            self._cells[app] = per  # most recently observed last
            old = per.get(model, Cell())
            keep = 1.0 if self.decay is None else self.decay
            per[model] = Cell(n=old.n * keep + 1.0, total=old.total * keep + score)
            while len(self._cells) > self.max_apps:
                self._cells.popitem(last=False)

    def add(self, row: _Labelled) -> None:
        """``LabelSink``: a label row from the flywheel; rows without an application are skipped."""
        if row.app:
            self.observe(row.app, row.model, row.score)

    # -- using ---------------------------------------------------------------------------------

    def cell(self, app: str, model: str) -> Cell:
        with self._lock:
            return self._cells.get(app, {}).get(model, Cell())

    def quality(self, app: str, model: str, *, prior: float) -> float:
        """Posterior mean quality of ``model`` for ``app`` given the router's ``prior``."""
        return self.cell(app, model).shrink(prior, self.strength)

    def adjust(
        self, app: str | None, estimates: Sequence[Estimate], *, names: Mapping[str, str] | None = None,
        pessimism: float | None = None,
    ) -> list[Estimate]:
        """The estimates with quality moved toward what ``app``'s labels say; unchanged without labels.

        ``names`` maps a candidate name to the name its labels are recorded under, when they differ;
        ``pessimism`` overrides the posterior's own z for this call.
        """
        z = self.pessimism if pessimism is None else pessimism
        if app is None:
            return list(estimates)
        with self._lock:
            per = dict(self._cells.get(app, {}))
        if not per:
            return list(estimates)
        out = []
        for e in estimates:
            cell = per.get((names or {}).get(e.name, e.name))
            if cell is not None:
                e = replace(e, quality=cell.shrink(e.quality, self.strength, z))
            out.append(e)
        return out

    def contender(self, app: str, model: str, *, against: str, z: float = 2.0) -> bool:
        """Whether ``model`` may still be as good as ``against`` for ``app``: its upper bound (mean +
        ``z`` standard errors of its labels) reaches ``against``'s mean; True while either has none."""
        mine, theirs = self.cell(app, model), self.cell(app, against)
        if mine.mean is None or theirs.mean is None:
            return True
        spread = math.sqrt(max(mine.mean * (1.0 - mine.mean), 0.01) / mine.n)
        return mine.mean + z * spread >= theirs.mean

    def apps(self) -> list[str]:
        with self._lock:
            return list(self._cells)

    def snapshot(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{app: {model: {n, mean}}}`` for reports."""
        with self._lock:
            return {
                app: {m: {"n": c.n, "mean": c.total / c.n} for m, c in per.items() if c.n > 0}
                for app, per in self._cells.items()
            }


def system_prompt(messages: Sequence[Any]) -> str | None:
    """The text of the first system (or developer) message, from dicts or request messages."""
    for m in messages:
        role = m.get("role") if isinstance(m, dict) else getattr(m, "role", None)
        if role in ("system", "developer"):
            content = m.get("content") if isinstance(m, dict) else getattr(m, "content", None)
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # content parts: the text ones, in order
                texts = [p.get("text") if isinstance(p, dict) else getattr(p, "text", None) for p in content]
                return "".join(t for t in texts if isinstance(t, str))
    return None


def app_key(body: ChatBody, *, header_tag: str | None = None) -> str | None:
    """The application a request belongs to: its tag (header, ``wattwise.tag``), its ``user``, else
    ``sys:`` and a short hash of its system prompt; ``None`` when it has none of these. Tags are
    kept as sent, so labels keyed by a trace row's tag land on the same application."""
    tag = header_tag or body.wattwise.tag or body.user
    if tag:
        return tag
    text = system_prompt(body.messages)
    if text:
        return "sys:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return None


class StreamDial:
    """Holds a stream's expected quality at ``target`` × the expected quality of its best single model
    by moving the utility policy's cost weight λ (integral control on the expected shortfall).

    Per request: the best single model is the candidate with the highest running mean estimate; the
    gap is the picked candidate's estimate minus ``target`` × the best one's. A leaky sum of gaps
    (half-life ``memory`` requests) sets ``λ = lam0 · exp(gain · sum)``: a surplus makes routing
    cheaper, a shortfall dearer. A per-request ``quality_target`` compares candidates of one prompt;
    this dial trades across prompts, which is where most of the saving is.

    Usage::

        dial = StreamDial(target=0.95)
        decision = router.decide(estimates, cost_weight=dial.cost_weight)
        dial.update(estimates, decision.model)
    """

    def __init__(self, *, target: float, lam0: float = 0.5, gain: float = 0.5, memory: float = 200.0,
                 lo: float = 1e-3, hi: float = 100.0, bias_memory: float = 100.0) -> None:
        if not 0.0 < target <= 1.0:
            raise InvalidRequest(f"quality_target must be in (0, 1], got {target!r}", param="quality_target")
        self.target = target
        self.lam0 = lam0
        self.gain = gain
        self.keep = 0.5 ** (1.0 / memory)
        self.lo, self.hi = lo, hi
        self.sum = 0.0
        self.bias = 0.0
        self.bias_keep = 0.5 ** (1.0 / bias_memory)
        self._means: dict[str, tuple[float, int]] = {}

    def observe(self, expected: float, judged: float) -> None:
        """A served answer's judged score against the quality it was expected to have: their running
        difference (``bias``, half-life ``bias_memory`` judgements) corrects every later gap, so
        estimates that run optimistic for the picks do not hold the stream below target."""
        self.bias = self.bias * self.bias_keep + (1.0 - self.bias_keep) * (judged - expected)

    @property
    def cost_weight(self) -> float:
        return float(min(self.hi, max(self.lo, self.lam0 * math.exp(self.gain * self.sum))))

    def update(self, estimates: Sequence[Estimate], picked: str, *,
               reference: Sequence[Estimate] | None = None, expected: float | None = None) -> None:
        """Count one decision: ``picked`` among ``estimates``; the best single model's quality is read
        from ``reference`` when given (posterior means, while the choice used lower bounds);
        ``expected`` replaces the picked estimate's quality (a cascade's plan is worth more than its
        first model)."""
        ref = list(reference) if reference is not None else list(estimates)
        for e in ref:
            total, n = self._means.get(e.name, (0.0, 0))
            self._means[e.name] = (total + e.quality, n + 1)
        best = max(self._means, key=lambda m: self._means[m][0] / self._means[m][1])
        chosen = expected if expected is not None else {e.name: e.quality for e in estimates}.get(picked)
        top = {e.name: e.quality for e in ref}.get(best)
        if chosen is None or top is None:
            return
        gap = chosen + self.bias - self.target * top
        self.sum = self.sum * self.keep + gap
        # keep λ's state inside its clamp, so a long surplus does not take as long to unwind
        limit = math.log(self.hi / self.lam0) / self.gain
        floor = math.log(self.lo / self.lam0) / self.gain
        self.sum = min(limit, max(floor, self.sum))
