"""Decision latency of the shipped router: ``route()`` p50/p99 at 100, 1,000, 2,000 and 4,000 tokens.

The decision includes the prompt embedding (WordLlama static vectors, head + tail + last part) and
the n-gram TF-IDF block. Peers in the same run: the embedding alone, a pure n-gram split, and a
trivial policy (always the first candidate). Budget: 5 ms p99 at 2,000 tokens.

Usage::

    $ python bench/router_latency.py [--repeats 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

import numpy as np

from wattwise.routing.features import ngrams
from wattwise.routing.router import Candidate, Router

WORDS = [
    "the",
    "model",
    "answers",
    "a",
    "question",
    "about",
    "energy",
    "cost",
    "tokens",
    "and",
    "def",
    "return",
    "value",
    "42",
    "which",
    "of",
    "these",
    "options",
    "A)",
    "B)",
    "C)",
    "D)",
    "is",
    "correct",
    "explain",
    "why",
]


def make_prompt(tokens: int, rng: random.Random) -> str:
    # about 4 characters a token, as the router's estimate assumes
    out, size = [], 0
    while size < tokens * 4:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    for _ in range(10):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return float(np.percentile(samples, 50) * 1e3), float(np.percentile(samples, 99) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    router = Router.default()
    cands = [Candidate(name=m, input_usd_per_mtok=None, output_usd_per_mtok=None) for m in router.models()]
    rng = random.Random(0)
    rows = []
    for tokens in (100, 1000, 2000, 4000):
        prompt = make_prompt(tokens, rng)
        r50, r99 = timed(lambda p=prompt: router.route(p, cands), args.repeats)
        _, c99 = timed(lambda p=prompt: router.route(p, cands, policy="cascade"), args.repeats)
        t50, t99 = timed(lambda p=prompt: ngrams(p), args.repeats)
        e50, e99 = timed(lambda p=prompt: router.featurizer.embedder.embed(p), args.repeats)
        _, b99 = timed(lambda: cands[0].name, args.repeats)
        rows.append(
            {
                "tokens": tokens,
                "route_p50_ms": r50,
                "route_p99_ms": r99,
                "cascade_p99_ms": c99,
                "tokenize_p50_ms": t50,
                "tokenize_p99_ms": t99,
                "embed_p50_ms": e50,
                "embed_p99_ms": e99,
                "trivial_p99_ms": b99,
                "route_over_tokenize_p50": r50 / t50 if t50 else None,
            }
        )
    if args.json:
        print(json.dumps({"models": len(cands), "repeats": args.repeats, "version": router.version, "rows": rows}))
        return
    print(f"route() over {len(cands)} candidates, {args.repeats} repeats (ms)")
    print(
        f"{'tokens':>6} {'p50':>7} {'p99':>7} {'cascade p99':>11} {'tokenize p50':>12} "
        f"{'route/tokenize':>14} {'embed p50':>9} {'embed p99':>9} {'trivial p99':>11}"
    )
    for r in rows:
        print(
            f"{r['tokens']:>6} {r['route_p50_ms']:>7.3f} {r['route_p99_ms']:>7.3f} "
            f"{r['cascade_p99_ms']:>11.3f} {r['tokenize_p50_ms']:>12.3f} "
            f"{r['route_over_tokenize_p50']:>13.2f}x {r['embed_p50_ms']:>9.3f} {r['embed_p99_ms']:>9.3f} "
            f"{r['trivial_p99_ms']:>11.4f}"
        )


if __name__ == "__main__":
    main()
