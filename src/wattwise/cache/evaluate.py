"""Evaluate the semantic cache on labelled question pairs against a plain cosine-threshold cache.

Protocol. Each pair ``{"a", "b", "same", "kind"}`` is one lookup: the cache holds ``a`` (its vector,
its guard features and its answer) as the nearest entry, and is asked ``b``. Pairs are put in a
stream order by a seeded hash of their text. The cache runs online over the whole stream exactly as
the gateway would: the guard refuses or passes the candidate, ``Thresholds.verdict`` says hit, miss or
verify, and a verification reveals the pair's label (standing in for ``same_answer`` on the fresh
answer) and is fed back with ``observe``. Every decision uses only evidence from earlier pairs. The
first ``learn_share`` of the stream is a warm-up that is not reported; figures are over the rest.
Verified lookups count as not served (the request went upstream).

The baseline is a cosine-threshold cache on the same vectors, with its threshold chosen on the
reported pairs themselves (an oracle, which favours the baseline) as the one with the highest hit
rate whose false-hit rate does not exceed ours.

Usage::

    pairs = load_pairs("qqp_pairs.jsonl.gz")
    result = evaluate(pairs, guard=Guard(Embedder.load()), max_error=0.01)
    print(result.to_dict()["hit_rate"])
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wattwise.cache.semantic import ALL_CHECKS, Features, Guard, Thresholds
from wattwise.exceptions import WattwiseError

Progress = Callable[[int], object]
CURVE_MAX_ERRORS = (0.0025, 0.005, 0.01, 0.02, 0.05)


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    same: bool
    kind: str


@dataclass
class Scored:
    """What the cache computes for the pairs: similarity, guard verdict and class of each."""

    similarity: np.ndarray
    reason: list[str | None]
    klass: list[str]
    features: dict[str, Features]


@dataclass
class CacheEvalResult:
    pairs: int
    learn_pairs: int
    max_error: float
    hit_rate: float
    false_hit_rate: float
    adversarial_false_hit_rate: float
    served_error: float
    verified_share: float
    thresholds: dict[str, float | None]
    baseline: dict[str, float]
    operating_points: list[dict[str, float]]
    curves: dict[str, list[dict[str, float]]]
    checks: dict[str, dict[str, float]]
    lookup_us: dict[str, float]
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def load_pairs(path: str | Path, limit: int | None = None) -> list[Pair]:
    """Read a pairs file (JSON lines, gzip if it ends in .gz): fields a, b, same and optional kind."""
    opener = gzip.open if str(path).endswith(".gz") else open
    pairs: list[Pair] = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                if limit is not None and len(pairs) >= limit:
                    break
                if line.strip():
                    row = json.loads(line)
                    pairs.append(Pair(str(row["a"]), str(row["b"]), bool(row["same"]), str(row.get("kind", ""))))
    except (OSError, ValueError, KeyError) as exc:
        raise WattwiseError(f"cannot read pairs from {path}: {exc}") from None
    if not pairs:
        raise WattwiseError(f"no pairs in {path}")
    return pairs


def stream_order(pairs: Sequence[Pair], seed: int = 0) -> list[int]:
    """The pairs' indices in a stream order fixed by a seeded hash of their text."""
    def key(i: int) -> str:
        return hashlib.sha1(f"{seed}\0{pairs[i].a}\0{pairs[i].b}".encode()).hexdigest()
    return sorted(range(len(pairs)), key=key)


def score_pairs(pairs: Sequence[Pair], guard: Guard, progress: Progress | None = None) -> Scored:
    """Vectors, features, guard reasons and classes for every pair (the expensive, shared part)."""
    vectors: dict[str, np.ndarray] = {}
    features: dict[str, Features] = {}
    sims, reasons, classes = np.zeros(len(pairs)), [], []
    for i, p in enumerate(pairs):
        for text in (p.a, p.b):
            if text not in features:
                features[text] = guard.features(text)
                vectors[text] = guard.embedder.vector(text)
        sims[i] = float(vectors[p.a] @ vectors[p.b])
        reasons.append(guard.differs(features[p.a], features[p.b]))
        classes.append(guard.klass(features[p.a], features[p.b]))
        if progress is not None and i % 1000 == 999:
            progress(1000)
    if progress is not None:
        progress(len(pairs) % 1000)
    return Scored(similarity=sims, reason=reasons, klass=classes, features=features)


def run_stream(pairs: Sequence[Pair], scored: Scored, order: Sequence[int], thresholds: Thresholds, *,
               one_class: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Run the cache online over the stream: per pair (in ``order``), whether it was served, verified."""
    served = np.zeros(len(pairs), dtype=bool)
    verified = np.zeros(len(pairs), dtype=bool)
    for i in order:
        refused = scored.reason[i] is not None
        klass, sim = "all" if one_class else scored.klass[i], float(scored.similarity[i])
        verdict = thresholds.verdict(klass, sim, refused=refused)
        if verdict == "verify":
            verified[i] = True
            thresholds.observe(klass, sim, pairs[i].same, refused=refused)
        served[i] = verdict == "hit"
    return served, verified


def rates(served: np.ndarray, same: np.ndarray, adversarial: np.ndarray) -> dict[str, float]:
    """Hit rate (served share of same pairs), false-hit rate (of the others), and on the adversarial ones."""
    return {"hit_rate": _share(served, same), "false_hit_rate": _share(served, ~same),
            "adversarial_false_hit_rate": _share(served, adversarial)}


def threshold_curve(similarity: np.ndarray, allowed: np.ndarray, same: np.ndarray, adversarial: np.ndarray,
                    points: int = 101) -> list[dict[str, float]]:
    """Hit and false-hit rates of a fixed cosine threshold (on the allowed pairs) from 0.5 to 1."""
    return [{"threshold": float(t), **rates(allowed & (similarity >= t), same, adversarial)}
            for t in np.linspace(0.5, 1.0, points)]


def baseline_at(similarity: np.ndarray, same: np.ndarray, adversarial: np.ndarray,
                false_hit_rate: float) -> dict[str, float]:
    """The cosine cache's best hit rate among thresholds whose false-hit rate is at most the given one."""
    neg = np.sort(similarity[~same])[::-1]
    allowed = int(np.floor(false_hit_rate * len(neg) + 1e-9))
    t = float(np.nextafter(neg[allowed], 2.0)) if allowed < len(neg) else float(neg.min())
    return {"threshold": t, **rates(similarity >= t, same, adversarial)}


def check_refusals(pairs: Sequence[Pair], scored: Scored, guard: Guard,
                   index: np.ndarray) -> dict[str, dict[str, float]]:
    """Each check alone: the share of same, other and adversarial pairs it refuses."""
    same = np.array([pairs[i].same for i in index], dtype=bool)
    adv = np.array([pairs[i].kind == "adversarial" for i in index], dtype=bool)
    out: dict[str, dict[str, float]] = {}
    for check in (*ALL_CHECKS, "all"):
        g = Guard(guard.embedder, theta=guard.theta, checks=guard.checks if check == "all" else (check,))
        g._vectors = guard._vectors
        refused = np.array([g.differs(scored.features[pairs[i].a], scored.features[pairs[i].b]) is not None
                            for i in index], dtype=bool)
        out[check] = {"same": _share(refused, same), "other": _share(refused, ~same),
                      "adversarial": _share(refused, adv)}
    return out


def lookup_cost(pairs: Sequence[Pair], guard: Guard, sample: int = 1000) -> dict[str, float]:
    """Per-lookup microseconds (p50, p95) of vector + features of the request + differs with the entry."""
    cached = [guard.features(p.a) for p in pairs[:sample]]
    took: list[float] = []
    for p, fa in zip(pairs[:sample], cached, strict=True):
        start = time.perf_counter()
        guard.embedder.vector(p.b)
        guard.differs(fa, guard.features(p.b))
        took.append((time.perf_counter() - start) * 1e6)
    return {"p50": float(np.percentile(took, 50)), "p95": float(np.percentile(took, 95)), "n": float(len(took))}


def evaluate(pairs: Sequence[Pair], *, guard: Guard, max_error: float = 0.01, learn_share: float = 0.3,
             seed: int = 0, one_class: bool = False, progress: Progress | None = None) -> CacheEvalResult:
    """The full evaluation; see the module docstring for the protocol."""
    if not 0 <= learn_share < 1:
        raise WattwiseError("learn_share must be in [0, 1)")
    scored = score_pairs(pairs, guard, progress)
    order = stream_order(pairs, seed)
    learn_n = int(len(order) * learn_share)
    test = np.array(sorted(order[learn_n:]), dtype=int)
    same = np.array([p.same for p in pairs], dtype=bool)[test]
    adv = np.array([p.kind == "adversarial" for p in pairs], dtype=bool)[test]
    sim = scored.similarity[test]
    guarded = np.array([r is None for r in scored.reason], dtype=bool)[test]

    points, main = [], None
    for m in sorted({*CURVE_MAX_ERRORS, max_error}):
        th = Thresholds(m, seed=seed)
        served, verified = run_stream(pairs, scored, order, th, one_class=one_class)
        point = {"max_error": m, **rates(served[test], same, adv), "verified_share": float(verified[test].mean())}
        points.append(point)
        if m == max_error:
            main = (point, served[test], verified[test], th)
    assert main is not None
    point, served, verified, th = main
    baseline = baseline_at(sim, same, adv, point["false_hit_rate"])
    served_n = int(served.sum())
    klasses = ["all"] if one_class else sorted(set(scored.klass))
    return CacheEvalResult(
        pairs=len(test), learn_pairs=learn_n, max_error=max_error, hit_rate=point["hit_rate"],
        false_hit_rate=point["false_hit_rate"], adversarial_false_hit_rate=point["adversarial_false_hit_rate"],
        served_error=float((served & ~same).sum() / served_n) if served_n else 0.0,
        verified_share=point["verified_share"], thresholds={k: th.threshold(k) for k in klasses},
        baseline=baseline, operating_points=points,
        curves={"cosine": threshold_curve(sim, np.ones_like(guarded), same, adv),
                "guard+cosine": threshold_curve(sim, guarded, same, adv)},
        checks=check_refusals(pairs, scored, guard, test), lookup_us=lookup_cost([pairs[i] for i in test], guard),
        counts={"same": int(same.sum()), "other": int((~same).sum()), "adversarial": int(adv.sum()),
                "served": served_n, "verified": int(verified.sum())})


def plot(result: CacheEvalResult, path: str | Path) -> None:
    """Hit rate against false-hit rate: cosine thresholds, guard + cosine thresholds, learned points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=90)
    pts = result.operating_points
    # The region that matters: false-hit rates up to a few times the configured maximum.
    right = max([3 * result.max_error, *(1.2 * p["false_hit_rate"] for p in pts)])
    for name, style in (("cosine", "-"), ("guard+cosine", "--")):
        curve = [p for p in result.curves[name] if p["false_hit_rate"] <= right]
        ax.plot([p["false_hit_rate"] for p in curve], [p["hit_rate"] for p in curve], style,
                label=f"{name} threshold sweep")
    ax.plot([p["false_hit_rate"] for p in pts], [p["hit_rate"] for p in pts], "o", color="C3",
            label="learned thresholds (max-error " + ", ".join(f"{p['max_error']:g}" for p in pts) + ")")
    ax.axvline(result.max_error, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("false-hit rate (served share of same = false pairs)")
    ax.set_ylabel("hit rate (served share of same = true pairs)")
    ax.set_xlim(0, right)
    ax.set_title(f"cache-eval: {result.pairs} reported pairs", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _share(mask: np.ndarray, among: np.ndarray) -> float:
    n = int(among.sum())
    return float((mask & among).sum() / n) if n else 0.0
