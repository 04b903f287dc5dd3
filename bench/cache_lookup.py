"""How long the response cache takes to answer, at 100,000 entries: exact and semantic lookups alone,
and whole requests through the gateway (in-process ASGI) with the cache off, on a hit, and on a miss.

* exact lookup: ``plan`` + ``lookup`` of a request whose canonical key is in the store;
* semantic lookup: the same for a paraphrase (embedding, guard features, the vector search over
  100,000 entries in one tenant and context, the guard and thresholds on the nearest candidates);
  the texts are the questions of a pairs file (``--pairs``, Quora question pairs by default), or
  synthetic ones when it is absent;
* requests: ``POST /v1/chat/completions`` against a mock backend that answers at once, so a request's
  time is the gateway's own; "hit" and "miss" run with 100,000 entries in the cache, "off" without it.

Usage::

    .venv/bin/python bench/cache_lookup.py [--entries 100000] [--pairs PATH] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PAIRS = "/work/shared/data/cache/qqp_pairs.jsonl.gz"


def texts(path: str, n: int) -> list[str]:
    """``n`` distinct questions from a pairs file, or synthetic sentences when it is absent."""
    out: dict[str, None] = {}
    if os.path.exists(path):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                out.setdefault(row["a"], None)
                out.setdefault(row["b"], None)
                if len(out) >= n:
                    break
    rng = random.Random(0)
    words = ["what", "how", "why", "which", "best", "way", "learn", "make", "good", "time", "people", "life",
             "world", "money", "work", "india", "english"]
    while len(out) < n:
        out.setdefault(" ".join(rng.choice(words) for _ in range(8)) + f" {len(out)}?", None)
    return list(out)[:n]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


async def lookups(n_entries: int, pairs: str, samples: int) -> dict[str, Any]:
    from tqdm import tqdm

    from wattwise.cache import build_cache
    from wattwise.cache.entry import Entry
    from wattwise.config import CacheConfig, Config, ModelConfig
    from wattwise.request import chat_body

    config = Config(cache=CacheConfig(semantic=True, max_entries=n_entries + 10),
                    models={"m": ModelConfig(backend="mock")})
    cache = build_cache(config, backends={"m": object()})
    assert cache is not None and cache.semantic is not None
    check = cache.semantic
    corpus = texts(pairs, n_entries + samples)
    stored, asked = corpus[:n_entries], corpus[n_entries:]

    def body(text: str) -> Any:
        return chat_body({"model": "m", "messages": [{"role": "user", "content": text}], "temperature": 0,
                          "wattwise": {"cache": "semantic"}})

    now = time.time()
    for text in tqdm(stored, desc="filling the cache", unit="entry", file=sys.stderr):
        plan = cache.plan(body(text))
        assert plan.key is not None and plan.key.text is not None
        await cache.store.put(Entry(key=plan.key.exact, namespace=plan.key.namespace, context=plan.key.context,
                                    body={"choices": [{"message": {"content": "x"}}]}, model="m",
                                    fingerprint=cache.fingerprints["m"], request_id="req", created=now,
                                    expires=now + 3600, features=check.features(plan.key.text),
                                    vector=check.embed(plan.key.text)), ttl_s=3600)
    exact, semantic = [], []
    for text in stored[:samples]:
        t0 = time.perf_counter()
        plan = cache.plan(body(text))
        hit = await cache.lookup(plan)
        exact.append(time.perf_counter() - t0)
        assert hit is not None and hit.kind == "exact"
    for text in asked:
        t0 = time.perf_counter()
        await cache.lookup(cache.plan(body(text)))
        semantic.append(time.perf_counter() - t0)
    return {"entries": n_entries, "exact_p50_ms": 1e3 * pct(exact, 50), "exact_p99_ms": 1e3 * pct(exact, 99),
            "semantic_p50_ms": 1e3 * pct(semantic, 50), "semantic_p99_ms": 1e3 * pct(semantic, 99)}


async def requests(n_entries: int, samples: int) -> dict[str, Any]:
    import httpx

    from wattwise.api.app import create_app
    from wattwise.backends.mock import MockBackend
    from wattwise.cache.entry import Entry
    from wattwise.config import CacheConfig, Config, ModelConfig, PriceConfig, StoreConfig
    from wattwise.gateway import Gateway
    from wattwise.store.sql import open_store

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for leg in ("off", "hit", "miss"):
            cache = CacheConfig(enabled=leg != "off", max_entries=n_entries + samples + 10)
            config = Config(store=StoreConfig(url=f"sqlite:///{tmp}/{leg}.db", journal_dir=""), cache=cache,
                            models={"m": ModelConfig(backend="mock", price=PriceConfig(input=1, output=2))})
            gateway = Gateway(config=config, backends={"m": MockBackend(name="m")}, store=open_store(config.store.url))
            await gateway.start()
            try:
                if gateway.cache is not None:  # fill with entries of other requests
                    now = time.time()
                    for i in range(n_entries):
                        await gateway.cache.store.put(Entry(
                            key=f"{i:064x}", namespace="key:-", context="c", body={}, model="m",
                            fingerprint=gateway.cache.fingerprints["m"], request_id="req", created=now,
                            expires=now + 3600), ttl_s=3600)
                transport = httpx.ASGITransport(app=create_app(gateway))
                async with httpx.AsyncClient(transport=transport, base_url="http://w") as client:
                    times = []
                    for i in range(samples + 50):
                        text = "What is the capital of France?" if leg == "hit" else f"question {i}"
                        t0 = time.perf_counter()
                        response = await client.post("/v1/chat/completions", json={
                            "model": "m", "temperature": 0, "messages": [{"role": "user", "content": text}]})
                        elapsed = time.perf_counter() - t0
                        assert response.status_code == 200
                        await asyncio.sleep(0)  # in-process nothing else lets the loop run the cache's writes
                        if i >= 50:  # the first ones warm up (and, for "hit", make the entry)
                            times.append(elapsed)
                            if leg != "off":
                                assert response.headers["x-wattwise-cache"] == leg, (leg, response.headers)
            finally:
                await gateway.stop()
            out[f"request_{leg}_p50_ms"] = 1e3 * statistics.median(times)
            out[f"request_{leg}_p99_ms"] = 1e3 * pct(times, 99)
    out["hit_added_p50_ms"] = out["request_hit_p50_ms"] - out["request_off_p50_ms"]
    out["miss_added_p50_ms"] = out["request_miss_p50_ms"] - out["request_off_p50_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--pairs", default=PAIRS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    result = {"machine": f"{os.cpu_count()} CPUs", "pairs": args.pairs if Path(args.pairs).exists() else "synthetic",
              **asyncio.run(lookups(args.entries, args.pairs, args.samples)),
              **asyncio.run(requests(args.entries, args.samples))}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"response cache at {args.entries:,} entries ({result['machine']}, texts: {result['pairs']})")
    print(f"{'measure':<34}{'p50 ms':>10}{'p99 ms':>10}")
    for name, key in (("exact lookup (plan + get)", "exact"), ("semantic lookup (embed+guard+search)", "semantic"),
                      ("request, cache off", "request_off"), ("request, exact hit", "request_hit"),
                      ("request, miss (lookup + keep)", "request_miss")):
        print(f"{name:<34}{result[key + '_p50_ms']:>10.3f}{result[key + '_p99_ms']:>10.3f}")
    print(f"added by the cache at p50: hit {result['hit_added_p50_ms']:+.3f} ms, "
          f"miss {result['miss_added_p50_ms']:+.3f} ms (targets: exact hit <= 1 ms; semantic lookup <= 5 ms)")


if __name__ == "__main__":
    main()
