"""Train a router from outcomes files: featurizer, per-model heads, and the default dial.

Usage::

    router = train_router(load_outcomes("routerbench_zs.train.jsonl.gz"))
    router.save("router.json")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from wattwise.exceptions import OutcomesError
from wattwise.outcomes import Outcome, by_prompt
from wattwise.routing.features import Featurizer
from wattwise.routing.predictors import fit_heads
from wattwise.routing.router import Router

DEFAULT_TARGET_SHARE = 0.95  # the default dial aims at 95% of the best single model's quality
COST_WEIGHTS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def train_router(
    rows: Sequence[Outcome],
    *,
    max_vocab: int = 4096,
    c: float = 0.3,
    progress: Callable[[str], None] | None = None,
) -> Router:
    """Fit a router on outcome rows (all files' rows together)."""
    if not rows:
        raise OutcomesError("no outcomes to train on", path="<train>")
    table = by_prompt(rows)
    prompts = [next(iter(per.values())).prompt for per in table.values()]
    featurizer = Featurizer.fit(prompts, max_vocab=max_vocab)
    heads = fit_heads(table, featurizer, c=c, progress=progress)
    router = Router(
        featurizer=featurizer,
        heads=heads,
        meta={"prompts": len(table), "rows": len(rows), "max_vocab": max_vocab, "C": c},
    )
    router.cost_weight = default_cost_weight(router, table)
    router.meta["cost_weight_rule"] = (
        f"largest cost_weight reaching {DEFAULT_TARGET_SHARE:.0%} of the best single model's training quality"
    )
    return router


def default_cost_weight(router: Router, table: dict[str, dict[str, Outcome]]) -> float:
    """The largest cost weight whose routed training quality reaches 95% of the best single model's."""
    from wattwise.routing.policies import Candidate

    models = router.models()
    candidates = [Candidate(name=m, input_usd_per_mtok=None, output_usd_per_mtok=None) for m in models]
    pids = [p for p in sorted(table) if all(m in table[p] for m in models)][:1500]
    if not pids:
        return 0.2
    estimates = [router.estimate(next(iter(table[p].values())).prompt, candidates) for p in pids]
    best_single = max(float(np.mean([table[p][m].score for p in pids])) for m in models)
    chosen = 0.0
    for lam in COST_WEIGHTS:
        picks = [router.decide(e, cost_weight=lam).model for e in estimates]
        quality = float(np.mean([table[p][m].score for p, m in zip(pids, picks, strict=True)]))
        if quality >= DEFAULT_TARGET_SHARE * best_single:
            chosen = lam
    return chosen
