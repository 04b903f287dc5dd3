"""``wattwise demo``: the whole gateway, offline, on real benchmark outcomes and a local model.

(a) A replay fleet of every model in a shipped outcomes file answers each prompt through the HTTP
API, once per single model and once with ``model: "auto"``; (b) a few live prompts go to the local
GGUF model through the official ``openai`` client, streaming and not, the last one asked twice at
temperature 0 so the second answer comes from the response cache. Then a report table
(quality, $, J, tokens/J, savings against the best single model) and a PNG.

Usage::

    result = run_demo(out_dir=Path("demo-out"), limit=None)
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from wattwise.api.app import create_app
from wattwise.build import build_gateway
from wattwise.config import Config, EnergyConfig, ModelConfig, PriceConfig, StoreConfig, default_config
from wattwise.data import shipped_path
from wattwise.inprocess import serve_in_thread
from wattwise.outcomes import Outcome, load_outcomes
from wattwise.reports.usage import Line, summarize
from wattwise.store.sql import open_store

OUTCOMES = "outcomes/routerbench_zs.test.jsonl.gz"
LIVE_PROMPTS = [
    "In one sentence, why do GPUs sit idle at night?",
    "Name three prime numbers.",
    "What is the capital of France? Answer in one word.",
]


def safe_name(model: str) -> str:
    return model.replace("/", "--")


def derived_prices(rows: Sequence[Outcome]) -> dict[str, float]:
    """A blended $/million tokens per model from the file's own costs (4 characters a token where
    the file has no counts); used only to order models by price, never to bill a replayed call."""
    spent: dict[str, float] = {}
    tokens: dict[str, float] = {}
    for row in rows:
        spent[row.model] = spent.get(row.model, 0.0) + (row.cost_usd or 0.0)
        count = (row.input_tokens or len(row.prompt) / 4) + (row.output_tokens or len(row.response or "") / 4)
        tokens[row.model] = tokens.get(row.model, 0.0) + count
    return {m: spent[m] / tokens[m] * 1e6 if tokens[m] else 0.0 for m in spent}


def energy_profiles() -> dict[str, EnergyConfig]:
    """Estimated J per output token for the replay fleet's open-weight models (see the data file)."""
    data = tomllib.loads(shipped_path("energy_profiles.toml").read_text())
    return {name: EnergyConfig(joules_per_output_token=p["joules_per_output_token"])
            for name, p in data["profiles"].items()}


def replay_config(outcomes: str, rows: Sequence[Outcome], store_url: str) -> Config:
    prices = derived_prices(rows)
    energy = energy_profiles()
    models = {
        safe_name(model): ModelConfig(backend="replay", outcomes=outcomes, source_model=model, trained_as=model,
                                      price=PriceConfig(input=price, output=price), energy=energy.get(model))
        for model, price in sorted(prices.items())
    }
    return Config(store=StoreConfig(url=store_url, flush_interval_s=0.05), models=models)


@dataclass
class RunTotals:
    """What the client saw of one run: headers summed, so the report can be cross-checked."""

    requests: int = 0
    errors: int = 0
    cost_usd: float = 0.0
    chosen: dict[str, int] = field(default_factory=dict)


async def _send_all(base_url: str, model: str, tag: str, prompts: Sequence[str], *,
                    concurrency: int, progress: Callable[[int], Any]) -> RunTotals:
    totals = RunTotals()
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:

        async def one(prompt: str) -> None:
            body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
            async with limit:
                for attempt in range(3):
                    try:
                        response = await client.post("/v1/chat/completions", headers={"x-wattwise-tag": tag},
                                                     json=body)
                        break
                    except httpx.TransportError:
                        # A keep-alive connection closed under us (a starved machine): send again.
                        if attempt == 2:
                            raise
            totals.requests += 1
            if response.status_code != 200:
                totals.errors += 1
            cost = response.headers.get("x-wattwise-cost-usd", "unknown")
            totals.cost_usd += float(cost) if cost not in ("unknown", "pending") else 0.0
            chosen = response.headers.get("x-wattwise-model", "none")
            totals.chosen[chosen] = totals.chosen.get(chosen, 0) + 1
            progress(1)

        await asyncio.gather(*(one(p) for p in prompts))
    return totals


def run_replay(store_url: str, *, limit: int | None, concurrency: int = 16) -> dict[str, RunTotals]:
    rows = load_outcomes(shipped_path(OUTCOMES))
    prompts = list(dict.fromkeys(r.prompt for r in rows))[:limit]
    config = replay_config(f"builtin:{OUTCOMES}", rows, store_url)
    gateway = build_gateway(config)
    runs = [*config.models, "auto"]
    results: dict[str, RunTotals] = {}
    with serve_in_thread(create_app(gateway)) as base_url, \
            tqdm(total=len(runs) * len(prompts), desc="replay fleet", unit="req", mininterval=1.0) as bar:
        for model in runs:
            tag = "auto" if model == "auto" else f"single:{model}"
            results[tag] = asyncio.run(_send_all(base_url, model, tag, prompts, concurrency=concurrency,
                                                 progress=bar.update))
    return results


def run_live(store_url: str, *, max_tokens: int = 48) -> list[dict[str, Any]]:
    """A few prompts to each local model through the official openai client (streamed and not); the
    last one (temperature 0) is asked twice, and the second answer comes from the response cache."""
    import openai

    config = default_config(store_url=store_url)
    gateway = build_gateway(config)
    out: list[dict[str, Any]] = []
    with serve_in_thread(create_app(gateway)) as base_url:
        client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
        for model in config.models:
            asks = [*enumerate(LIVE_PROMPTS), (len(LIVE_PROMPTS) - 1, LIVE_PROMPTS[-1])]
            for i, prompt in tqdm(asks, desc=f"live {model}", unit="req"):
                messages: Any = [{"role": "user", "content": prompt}]
                headers = {"x-wattwise-tag": f"live:{model}"}
                started = time.perf_counter()
                cache = None
                if i == 0:
                    stream = client.chat.completions.create(model=model, messages=messages, stream=True,
                                                            max_tokens=max_tokens,
                                                            stream_options={"include_usage": True},
                                                            extra_headers=headers)
                    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                else:
                    deterministic = {"temperature": 0} if i == len(LIVE_PROMPTS) - 1 else {}
                    raw = client.chat.completions.with_raw_response.create(
                        model=model, messages=messages, max_tokens=max_tokens, extra_headers=headers,
                        extra_body=deterministic)
                    cache = raw.headers.get("x-wattwise-cache")
                    text = raw.parse().choices[0].message.content or ""
                out.append({"model": model, "prompt": prompt, "answer": text.strip(), "stream": i == 0,
                            "cache": cache, "seconds": round(time.perf_counter() - started, 3)})
    return out


def savings_table(lines: Sequence[Line]) -> dict[str, Any]:
    singles = [line for line in lines if line.group.startswith("single:")]
    best = max(singles, key=lambda line: (line.quality or 0.0, -line.cost_usd))
    auto = next((line for line in lines if line.group == "auto"), None)
    summary: dict[str, Any] = {"best_single": {"model": best.group.removeprefix("single:"),
                                               "quality": best.quality, "cost_usd": best.cost_usd}}
    if auto is not None and best.cost_usd > 0:
        summary["auto"] = {"quality": auto.quality, "cost_usd": auto.cost_usd,
                           "savings_vs_best_single": 1 - auto.cost_usd / best.cost_usd,
                           "quality_vs_best_single": (auto.quality or 0) - (best.quality or 0)}
    return summary


def plot_demo(lines: Sequence[Line], auto_spend: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    singles = [line for line in lines if line.group.startswith("single:")]
    auto = next((line for line in lines if line.group == "auto"), None)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 6))
    for line in singles:
        ax1.scatter(line.cost_usd, line.quality or 0, color="#4c72b0")
        ax1.annotate(line.group.removeprefix("single:").split("--")[-1], (line.cost_usd, line.quality or 0),
                     fontsize=7, xytext=(3, 3), textcoords="offset points")
    if auto is not None:
        ax1.scatter(auto.cost_usd, auto.quality or 0, marker="*", s=250, color="#c44e52", label="auto")
        ax1.legend()
    ax1.set_xscale("log")
    ax1.set_xlabel("total cost ($, log scale)")
    ax1.set_ylabel("quality (mean score)")
    ax1.set_title("Quality against cost: single models and auto")
    singles = sorted(singles, key=lambda line: line.cost_usd)
    names = [line.group.removeprefix("single:") for line in singles]
    ys = list(range(len(names)))
    ax2.barh([y + 0.2 for y in ys], [line.cost_usd for line in singles], height=0.4, color="#4c72b0",
             label="all traffic on this model")
    ax2.barh([y - 0.2 for y in ys], [auto_spend.get(n, 0.0) for n in names], height=0.4, color="#c44e52",
             label="auto's spend on this model")
    ax2.set_yticks(ys, [n.split("--")[-1] for n in names], fontsize=8)
    ax2.set_xscale("log")
    ax2.set_xlabel("spend ($, log scale)")
    ax2.set_title("Spend per model")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(*, out_dir: Path, limit: int | None = None, live: bool = True) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wattwise-demo-") as tmp:
        store_url = f"sqlite:///{tmp}/traces.db"
        totals = run_replay(store_url, limit=limit)
        live_answers = run_live(store_url) if live else []
        store = open_store(store_url)
        rows = store.fetch()
        store.close()
    lines = summarize(rows, by="tag")
    policies = sorted({r.route_policy or "" for r in rows if r.tag == "auto"})
    plot_path = out_dir / "demo.png"
    auto_spend = {line.group: line.cost_usd for line in summarize([r for r in rows if r.tag == "auto"], by="model")}
    plot_demo(lines, auto_spend, plot_path)
    result = {"lines": [line.to_json() for line in lines], "summary": savings_table(lines),
              "auto_policy": policies, "auto_routes": totals.get("auto", RunTotals()).chosen, "live": live_answers,
              "client_errors": {tag: t.errors for tag, t in totals.items() if t.errors},
              "plot": str(plot_path)}
    (out_dir / "demo.json").write_text(json.dumps(result, indent=2))
    return result
