"""Train a router from outcomes: featurizer, joint quality and length models, and the default dial.

Usage::

    router = train_router(load_outcomes("routerbench_zs.train.jsonl.gz"))
    router.save("router.json")

``train_router`` takes mixed rows of any models and tasks (a model may answer a prompt several
times: its scores are averaged, counted as that many examples). It embeds each distinct prompt
once and fits two convex-or-small L-BFGS problems; measured times are in ``docs/routing.md``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import numpy as np

from wattwise.exceptions import OutcomesError
from wattwise.outcomes import Outcome, by_prompt
from wattwise.routing.embed import Embedder
from wattwise.routing.features import Featurizer
from wattwise.routing.predictors import fit_bank
from wattwise.routing.router import Router

DEFAULT_TARGET_SHARE = 0.95  # the default dial aims at 95% of the best single model's quality
COST_WEIGHTS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def train_router(
    rows: Sequence[Outcome],
    *,
    rank: int = 0,
    max_vocab: int = 2048,
    penalty: tuple[float, float] | None = None,
    embedder: Embedder | None = None,
    progress: Callable[[str], None] | None = None,
) -> Router:
    """Fit a router on outcome rows (all files' rows together).

    ``max_vocab``: size of the n-gram TF-IDF block beside the embedding (0: embedding only).
    ``penalty`` = (strength, residual split), e.g. ``serving.bank.tuning`` of the router being
    retrained, skips the penalty search (about 6x faster; the Platt step is still cross-validated).
    ``rank`` adds that many latent skills to the joint quality model (0: shared difficulty plus
    per-model residuals, the measured best on our data). ``embedder`` lets callers that train many
    routers share one loaded (and memoising) embedder.
    """
    if not rows:
        raise OutcomesError("no outcomes to train on", path="<train>")
    started = time.perf_counter()
    table: dict[str, dict[str, list[Outcome]]] = {}
    for row in rows:
        table.setdefault(row.prompt_id, {}).setdefault(row.model, []).append(row)
    prompts = [next(iter(per.values()))[0].prompt for per in table.values()]
    featurizer = Featurizer.fit(prompts, embedder=embedder, max_vocab=max_vocab)
    if progress is not None:
        progress("features")
    bank = fit_bank(table, featurizer, rank=rank, penalty=penalty)
    if progress is not None:
        progress("models")
    router = Router(
        featurizer=featurizer,
        bank=bank,
        meta={
            "prompts": len(table),
            "rows": len(rows),
            "rank": rank,
            "max_vocab": max_vocab,
            "embedder": featurizer.to_json()["embedder"],
        },
    )
    router.cost_weight = default_cost_weight(router, by_prompt(rows))
    router.meta["cost_weight_rule"] = (
        f"largest cost_weight reaching {DEFAULT_TARGET_SHARE:.0%} of the best single model's training quality"
    )
    router.meta["train_seconds"] = round(time.perf_counter() - started, 1)
    # Round-trip through JSON: the router in memory is exactly the one a file would give (same version).
    return Router.from_json(json.loads(json.dumps(router.to_json())), embedder=featurizer.embedder)


def default_cost_weight(router: Router, table: dict[str, dict[str, Outcome]]) -> float:
    """The largest cost weight whose routed training quality reaches 95% of the best single model's.

    Measured on the prompts answered by the widest set of models (at least 30 prompts; mixed files
    rarely share every model), at the trained prices.
    """
    from wattwise.routing.policies import Candidate

    groups: dict[frozenset[str], list[str]] = {}
    for pid in sorted(table):
        groups.setdefault(frozenset(table[pid]), []).append(pid)
    wide = [g for g in groups if len(groups[g]) >= 30 and len(g) >= 2] or [g for g in groups if len(g) >= 2]
    if not wide:
        return 0.2
    models_set = max(wide, key=lambda g: (len(g), len(groups[g])))
    models = sorted(models_set)
    pids = groups[models_set][:1500]
    candidates = [Candidate(name=m, input_usd_per_mtok=None, output_usd_per_mtok=None) for m in models]
    estimates = [router.estimate(next(iter(table[p].values())).prompt, candidates) for p in pids]
    best_single = max(float(np.mean([table[p][m].score for p in pids])) for m in models)
    chosen = 0.0
    for lam in COST_WEIGHTS:
        picks = [router.decide(e, cost_weight=lam).model for e in estimates]
        quality = float(np.mean([table[p][m].score for p, m in zip(pids, picks, strict=True)]))
        if quality >= DEFAULT_TARGET_SHARE * best_single:
            chosen = lam
    return chosen
