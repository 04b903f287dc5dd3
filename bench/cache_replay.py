"""The response cache on a replay of RouterBench prompts with paraphrased repeats: $ and J saved, false hits.

A stream of chat requests goes through a real in-process gateway (``Gateway`` + ``create_app`` over
httpx's ASGI transport), one request at a time, under three settings: the cache off, the default
(``[cache]`` defaults: the exact cache for deterministic requests) and semantic (``[cache] semantic =
true``, each request asking ``wattwise.cache = "semantic"``, the default ``max_error``). Every request
has temperature 0.

**The prompts.** ``--prompts N`` distinct prompts (seeded sample) of one model's recorded outcomes in
RouterBench (test and train files); the model answers with its recorded response, cost and tokens
(:class:`~wattwise.backends.replay.ReplayBackend`), priced as recorded, its energy estimated from the
shipped per-output-token profile (``src/wattwise/data/energy_profiles.toml``; the default model,
``meta/llama-2-70b-chat``, has one: GPT and Claude have none, so their J would be unknown).

**The stream** (the shares are of all requests): ``--paraphrases`` (20%) paraphrased repeats of an
earlier prompt, ``--exact`` (10%) verbatim repeats, ``--twins`` (5%) near-miss twins, the rest first
occurrences. A repeat comes after its original, at a uniformly random later place.

* A **paraphrase** applies 1 to 3 meaning-preserving rewrites to the original, chosen at random among
  those that change it (:data:`REWRITES`): a politeness prefix; a politeness suffix (only where the
  prompt does not end in "Answer:"); whitespace (runs of spaces collapsed, or a blank line doubled);
  the case of instruction words ("Print only" -> "print only"); contractions ("What is" ->
  "What's", "does not" -> "doesn't"); and a curated synonym list for instruction phrases ("Write a
  function" -> "Create a function", "without explanation" -> "with no explanation", ...). Numbers,
  names, answer options (lines ``X) ...``) and code are never touched. Its recorded answer is its
  original's.
* A **twin** makes one answer-determining change in the prompt's last block (the question itself,
  after any few-shot examples): the option texts of the original's answer letter and another letter
  swapped (multiple choice; the recorded answer's letter is swapped to match, so the answer differs by
  construction), a number in the question changed (+1, or a digit appended), or a negation inserted
  ("is" -> "is not", ...). For the last two its answer is the recorded answer of another prompt of the
  same task whose answer differs from the original's (a stand-in for "the model answers otherwise"),
  so a verification sees a different answer. A twin must never be served from the cache.

The backend is ``ReplayBackend`` over an index from each stream text to the outcome it answers with
(the original's for a paraphrase and an exact repeat; the twin's own as above).

**False hits**, two counts: *by source*, a hit whose served answer was made for another original
prompt (a twin served anything, or a paraphrase served another question's answer); *by answer*, a
hit whose served text differs from what the model would have answered this request.

Usage::

    $ OMP_NUM_THREADS=1 python bench/cache_replay.py [--prompts 3000] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from wattwise.api.app import create_app
from wattwise.backends.base import ChatRequest, Completion
from wattwise.backends.replay import ReplayBackend, ReplayIndex
from wattwise.config import CacheConfig, Config, ModelConfig, PriceConfig, StoreConfig
from wattwise.demo import derived_prices, energy_profiles, safe_name
from wattwise.gateway import Gateway
from wattwise.outcomes import Outcome, load_outcomes
from wattwise.store.sql import open_store

DATA = Path("/work/shared/data/outcomes")
FILES = [DATA / "routerbench_zs.test.jsonl.gz", DATA / "routerbench_zs.train.jsonl.gz"]

# -- paraphrases: meaning-preserving rewrites ------------------------------------------------------

PREFIXES = ["Please help me with this.\n", "Hi, I have a question.\n\n", "Could you help me with the following?\n",
            "Hello! "]
SUFFIXES = [" Thanks!", "\nThank you.", " Thanks in advance."]
CONTRACTIONS = [("What is", "What's"), ("what is", "what's"), ("It is", "It's"), ("it is", "it's"),
                ("does not", "doesn't"), ("do not", "don't"), ("is not", "isn't"), ("are not", "aren't"),
                ("cannot", "can't"), ("Let us", "Let's"), ("that is", "that's"), ("There is", "There's")]
SYNONYMS = [("Write a function", "Create a function"), ("Write a python function", "Create a python function"),
            ("Please answer with the letter of the correct answer.",
             "Please reply with the letter of the right answer."),
            ("Print only a single choice", "Output only a single choice"),
            ("without explanation", "with no explanation"),
            ("Which of the following", "Which among the following"), ("Write a program", "Create a program")]
CASED = ["Print only", "Please answer", "Write a", "Answer:"]
_OPTION = re.compile(r"^[A-E]\) .*$", re.M)
_CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)


def _outside_protected(text: str, edit: Any) -> str:
    """``edit`` applied to the parts of ``text`` that are not option lines or code."""
    spans = sorted([m.span() for m in _OPTION.finditer(text)] + [m.span() for m in _CODE.finditer(text)])
    out, pos = [], 0
    for start, end in spans:
        if start < pos:
            continue
        out += [edit(text[pos:start]), text[start:end]]
        pos = end
    out.append(edit(text[pos:]))
    return "".join(out)


def _prefix(text: str, rng: random.Random) -> str:
    return rng.choice(PREFIXES) + text


def _suffix(text: str, rng: random.Random) -> str:
    return text if text.rstrip().endswith("Answer:") else text.rstrip() + rng.choice(SUFFIXES)


def _whitespace(text: str, rng: random.Random) -> str:
    collapsed = _outside_protected(text, lambda s: re.sub(r"(?<=\S)  +(?=\S)", " ", s))
    if collapsed != text:
        return collapsed
    return text.replace("\n\n", "\n\n\n", 1) if "\n\n" in text else text + "\n"


def _case(text: str, rng: random.Random) -> str:
    found = [w for w in CASED if w in text]
    if not found:
        return text
    word = rng.choice(found)
    return _outside_protected(text, lambda s: s.replace(word, word[0].lower() + word[1:]))


def _pairs(text: str, pairs: list[tuple[str, str]]) -> str:
    def edit(s: str) -> str:
        for a, b in pairs:
            s = re.sub(rf"\b{re.escape(a)}(?![\w'])", b, s)
        return s

    return _outside_protected(text, edit)


def _contract(text: str, rng: random.Random) -> str:
    return _pairs(text, CONTRACTIONS)


def _synonyms(text: str, rng: random.Random) -> str:
    return _pairs(text, SYNONYMS)


REWRITES = {"prefix": _prefix, "suffix": _suffix, "whitespace": _whitespace, "case": _case,
            "contraction": _contract, "synonym": _synonyms}


def paraphrase(text: str, rng: random.Random) -> tuple[str, list[str]]:
    """1 to 3 rewrites (each one that changes the text), in a random order; the names applied."""
    names = list(REWRITES)
    rng.shuffle(names)
    want, out, used = rng.randint(1, 3), text, []
    for name in names:
        changed = REWRITES[name](out, rng)
        if changed != out:
            out, used = changed, [*used, name]
        if len(used) == want:
            break
    return out, used


# -- twins: one answer-determining change --------------------------------------------------------

_LETTER = re.compile(r"^\W*([A-E])(?:\\n|\W)*$")  # "['A\\n']", as RouterBench records them
_NEGATE = [(" is ", " is not "), (" are ", " are not "), (" was ", " was not "), (" can ", " cannot "),
           (" will ", " will not "), (" does ", " does not "), (" has ", " has not ")]


def _split_last(text: str) -> tuple[str, str]:
    head, sep, last = text.rpartition("\n\n")
    return head + sep, last


def twin(row: Outcome, rng: random.Random) -> tuple[str, str, str | None] | None:
    """(text, change, answer) for a twin of ``row``; the answer is None when another prompt's is needed."""
    head, last = _split_last(row.prompt)
    choices: list[str] = []
    letter = _LETTER.match((row.response or "").strip())
    options = dict(re.findall(r"^([A-E])\) (.*)$", last, re.M))
    if letter and letter.group(1) in options and len(options) > 1:
        choices.append("option swap")
    question = _OPTION.sub("", last)
    if re.search(r"\d", question):
        choices.append("number")
    if any(a in question for a, _ in _NEGATE):
        choices.append("negation")
    if not choices:
        return None
    change = rng.choice(choices)
    if change == "option swap":
        assert letter is not None
        a = letter.group(1)
        b = rng.choice(sorted(set(options) - {a}))
        swap = {a: options[b], b: options[a]}
        swapped = re.sub(r"^([A-E])\) (.*)$", lambda m: f"{m.group(1)}) {swap.get(m.group(1), m.group(2))}",
                         last, flags=re.M)
        if swapped == last:
            return None
        answer = (row.response or "").replace(a, "\0").replace(b, a).replace("\0", b)
        return head + swapped, f"option swap {a}<->{b}", answer
    if change == "number":
        lines = last.split("\n")
        spots = [(n, m) for n, line in enumerate(lines) if not _OPTION.match(line) for m in re.finditer(r"\d+", line)]
        n, m = rng.choice(spots)
        lines[n] = lines[n][:m.start()] + str(int(m.group(0)) + 1) + lines[n][m.end():]
        return head + "\n".join(lines), "number", None
    found = [(a, b) for a, b in _NEGATE if a in question]
    a, b = rng.choice(found)
    at = last.find(a)
    if re.match(r"^[A-E]\) ", last[last.rfind("\n", 0, at) + 1:]):
        return None
    return head + last[:at] + b + last[at + len(a):], "negation", None


# -- the stream ------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Item:
    text: str
    kind: str  # "first" | "exact" | "paraphrase" | "twin"
    origin: str  # the original prompt's id (a twin is its own origin)
    answer: Outcome  # what the replayed model answers this text
    how: str = ""


def _same(a: str | None, b: str | None) -> bool:
    return " ".join((a or "").split()).lower() == " ".join((b or "").split()).lower()


def build_stream(rows: list[Outcome], *, prompts: int, paraphrases: float, exact: float, twins: float,
                 seed: int) -> list[Item]:
    rng = random.Random(seed)
    pool = sorted({r.prompt: r for r in rows}.values(), key=lambda r: r.prompt_id)
    rng.shuffle(pool)
    originals, spare = pool[:prompts], pool[prompts:] or pool
    first = 1.0 - paraphrases - exact - twins
    total = round(len(originals) / first)
    counts = {"paraphrase": round(total * paraphrases), "exact": round(total * exact), "twin": round(total * twins)}
    timed: list[tuple[float, Item]] = [(float(i), Item(text=r.prompt, kind="first", origin=r.prompt_id, answer=r))
                                       for i, r in enumerate(originals)]
    seen = {r.prompt for r in pool}
    by_task: dict[str, list[Outcome]] = {}
    for r in pool:
        by_task.setdefault(r.task, []).append(r)
    n = len(originals)
    for kind, count in counts.items():
        made = 0
        while made < count:
            i = rng.randrange(n)
            src = originals[i]
            when = rng.uniform(i + 0.01, n)
            if kind == "exact":
                timed.append((when, Item(text=src.prompt, kind="exact", origin=src.prompt_id, answer=src)))
            elif kind == "paraphrase":
                text, used = paraphrase(src.prompt, rng)
                if text in seen:
                    continue
                timed.append((when, Item(text=text, kind="paraphrase", origin=src.prompt_id,
                                         answer=replace(src, prompt=text), how="+".join(used))))
            else:
                made_twin = twin(src, rng)
                if made_twin is None or made_twin[0] in seen:
                    continue
                text, change, response = made_twin
                if response is None:
                    donors = [d for d in by_task.get(src.task, spare) if not _same(d.response, src.response)]
                    if not donors:
                        continue
                    donor = rng.choice(donors)
                    answer = replace(donor, prompt=text, prompt_id="twin:" + src.prompt_id)
                else:
                    answer = replace(src, prompt=text, prompt_id="twin:" + src.prompt_id, response=response)
                timed.append((when, Item(text=text, kind="twin", origin=f"twin:{src.prompt_id}:{made}",
                                         answer=answer, how=change)))
            seen.add(timed[-1][1].text) if kind != "exact" else None
            made += 1
    timed.sort(key=lambda pair: pair[0])
    return [item for _, item in timed]


# -- the gateway -----------------------------------------------------------------------------------


class CountingReplay(ReplayBackend):
    """The replay backend, counting the calls that reach it (the upstream calls)."""

    calls = 0

    async def complete(self, request: ChatRequest) -> Completion:
        self.calls += 1
        return await super().complete(request)


@dataclass(kw_only=True)
class Leg:
    name: str
    requests: int = 0
    errors: int = 0
    upstream: int = 0
    hits: dict[str, int] = field(default_factory=lambda: {"exact": 0, "semantic": 0})
    spent_usd: float = 0.0
    saved_usd: float = 0.0
    spent_j: float = 0.0
    saved_j: float = 0.0
    false_by_source: int = 0
    false_by_answer: int = 0
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    lookup_ms: list[float] = field(default_factory=list)
    halves: list[dict[str, int]] = field(default_factory=list)
    false_examples: list[dict[str, Any]] = field(default_factory=list)
    thresholds: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    current: str = ""
    audit: dict[str, dict[str, Any]] = field(default_factory=dict)
    guard: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        ms = sorted(self.lookup_ms)
        para = self.by_kind.get("paraphrase", {})
        return {"leg": self.name, "requests": self.requests, "errors": self.errors, "upstream_calls": self.upstream,
                "hits_exact": self.hits["exact"], "hits_semantic": self.hits["semantic"],
                "spent_usd": round(self.spent_usd, 4), "saved_usd": round(self.saved_usd, 4),
                "spent_j": round(self.spent_j, 1), "saved_j": round(self.saved_j, 1),
                "false_hits_by_source": self.false_by_source, "false_hits_by_answer": self.false_by_answer,
                "paraphrase_hit_rate": round(para.get("hit", 0) / para["n"], 4) if para.get("n") else None,
                "by_kind": self.by_kind, "halves": self.halves,
                "lookup_p50_ms": round(float(np.percentile(ms, 50)), 3) if ms else None,
                "lookup_p99_ms": round(float(np.percentile(ms, 99)), 3) if ms else None,
                "thresholds": self.thresholds, "verifications": self.guard,
                "guard_vs_original": self.audit, "false_examples": self.false_examples[:5],
                "wall_s": round(self.wall_s, 1)}


async def run_leg(name: str, stream: list[Item], *, model: str, source_rows: list[Outcome], cache: CacheConfig,
                  ask: str | None, progress: bool) -> Leg:
    index = ReplayIndex(table={item.text: {model: item.answer} for item in reversed(stream)})
    mname = safe_name(model)
    backend = CountingReplay(name=mname, index=index, source_model=model)
    price = derived_prices(source_rows).get(model, 1.0)
    leg = Leg(name=name)
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(store=StoreConfig(url=f"sqlite:///{tmp}/traces.db", flush_interval_s=0.05), cache=cache,
                        models={mname: ModelConfig(backend="replay", source_model=model,
                                                   price=PriceConfig(input=price, output=price),
                                                   energy=energy_profiles().get(model))})
        gateway = Gateway(config=config, backends={mname: backend}, store=open_store(f"sqlite:///{tmp}/traces.db"))
        await gateway.start()
        if gateway.cache is not None:
            original_lookup = gateway.cache.lookup

            async def timed(plan: Any) -> Any:
                found = await original_lookup(plan)
                if plan.lookup:
                    leg.lookup_ms.append(plan.lookup_s * 1000)
                if plan.probe is not None:  # held back for verification: the request goes upstream
                    guard = leg.guard.setdefault(leg.current, {"verified": 0, "guard_refused": 0})
                    guard["verified"] += 1
                    guard["guard_refused"] += plan.probe.refused
                return found

            gateway.cache.lookup = timed  # type: ignore[method-assign]
        origin_of: dict[str, str] = {}
        half = len(stream) // 2
        halves = [{"requests": 0, "hits_exact": 0, "hits_semantic": 0} for _ in range(2)]
        started = time.perf_counter()
        try:
            transport = httpx.ASGITransport(app=create_app(gateway))
            async with httpx.AsyncClient(transport=transport, base_url="http://wattwise", timeout=60) as client:
                bar = tqdm(stream, desc=name, unit="req", disable=not progress, file=sys.stderr, mininterval=1.0)
                for i, item in enumerate(bar):
                    body: dict[str, Any] = {"model": mname, "temperature": 0,
                                            "messages": [{"role": "user", "content": item.text}]}
                    leg.current = item.kind
                    if ask is not None:
                        body["wattwise"] = {"cache": ask}
                    response = await client.post("/v1/chat/completions", json=body)
                    if gateway.cache is not None:
                        await gateway.cache.settle()
                    leg.requests += 1
                    h = halves[0 if i < half else 1]
                    h["requests"] += 1
                    kinds = leg.by_kind.setdefault(item.kind, {"n": 0, "hit": 0, "exact": 0, "semantic": 0})
                    kinds["n"] += 1
                    if response.status_code != 200:
                        leg.errors += 1
                        continue
                    origin_of[response.headers["x-wattwise-request-id"]] = item.origin
                    if response.headers.get("x-wattwise-cache") != "hit":
                        continue
                    kind = response.headers.get("x-wattwise-cache-kind", "exact")
                    leg.hits[kind] += 1
                    h["hits_" + kind] += 1
                    kinds["hit"] += 1
                    kinds[kind] += 1
                    source = response.headers.get("x-wattwise-cache-source", "")
                    served = response.json()["choices"][0]["message"]["content"]
                    wrong_source = origin_of.get(source) != item.origin
                    wrong_answer = not _same(served, item.answer.response)
                    leg.false_by_source += wrong_source
                    leg.false_by_answer += wrong_answer
                    if wrong_source or wrong_answer:
                        extra = response.json()["wattwise"].get("cache", {})
                        leg.false_examples.append({"item_kind": item.kind, "how": item.how, "hit_kind": kind,
                                                   "similarity": extra.get("similarity"),
                                                   "asked_tail": item.text[-300:], "served": served[:120],
                                                   "expected": (item.answer.response or "")[:120]})
        finally:
            leg.wall_s = time.perf_counter() - started
            gateway.writer.flush()
            rows = gateway.store.fetch()
            await gateway.stop()
    leg.upstream = backend.calls
    leg.halves = halves
    for row in rows:
        leg.spent_usd += row.cost_usd or 0.0
        leg.spent_j += row.energy_j or 0.0
        if row.cache == "hit":
            leg.saved_usd += row.saved_usd or 0.0
            leg.saved_j += row.saved_j or 0.0
    if gateway.cache is not None and gateway.cache.semantic is not None:
        leg.audit = guard_audit(stream, gateway.cache.semantic)
        th = gateway.cache.semantic.thresholds  # type: ignore[attr-defined]
        leg.thresholds = {k: {"threshold": th.threshold(k), "verified": sum(c["n"]) + c["refused"][0],
                              "wrong": sum(c["wrong"]) + c["refused"][1], "refused": c["refused"][0]}
                          for k, c in th._counts.items()}
    return leg


def guard_audit(stream: list[Item], semantic: Any) -> dict[str, dict[str, Any]]:
    """The guard's verdict and the cosine of each paraphrase and twin against its original prompt,
    by rewrite (a paraphrase counts under each of its rewrites) or change (twins): what the semantic
    cache could serve once thresholds open."""
    first = {item.origin: item.text for item in stream if item.kind == "first"}
    out: dict[str, dict[str, Any]] = {}
    for item in stream:
        if item.kind not in ("paraphrase", "twin"):
            continue
        original = first[item.origin.split(":")[1] if item.kind == "twin" else item.origin]
        fa, fb = semantic.features(original), semantic.features(item.text)
        reason = semantic.differs(fa, fb)
        cosine = float(semantic.embed(original) @ semantic.embed(item.text))
        keys = ([f"paraphrase:{r}" for r in item.how.split("+")] + ["paraphrase:all"] if item.kind == "paraphrase"
                else [f"twin:{item.how.split(' ')[0]}", "twin:all"])
        for key in keys:
            row = out.setdefault(key, {"n": 0, "guard_pass": 0, "min_cosine": 1.0, "refused_by": {}})
            row["n"] += 1
            row["guard_pass"] += reason is None
            row["min_cosine"] = round(min(row["min_cosine"], cosine), 4)
            if reason is not None:
                check = reason.split(":")[0]
                row["refused_by"][check] = row["refused_by"].get(check, 0) + 1
    return dict(sorted(out.items()))


def table(legs: list[Leg]) -> str:
    rows = [("", *[leg.name for leg in legs])]
    s = [leg.summary() for leg in legs]

    def add(label: str, key: str, fmt: str = "{}") -> None:
        rows.append((label, *[fmt.format(x[key]) if x[key] is not None else "-" for x in s]))

    add("requests", "requests")
    add("errors", "errors")
    add("upstream calls", "upstream_calls")
    add("hits exact", "hits_exact")
    add("hits semantic", "hits_semantic")
    add("$ spent", "spent_usd", "{:.4f}")
    add("$ saved", "saved_usd", "{:.4f}")
    add("J spent", "spent_j", "{:,.0f}")
    add("J saved", "saved_j", "{:,.0f}")
    add("false hits (by source)", "false_hits_by_source")
    add("false hits (by answer)", "false_hits_by_answer")
    add("paraphrase hit rate", "paraphrase_hit_rate", "{:.1%}")
    add("lookup p50 ms", "lookup_p50_ms", "{:.3f}")
    add("lookup p99 ms", "lookup_p99_ms", "{:.3f}")
    add("wall s", "wall_s", "{:.1f}")
    width = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    cells = [[str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, width, strict=True))]
             for r in rows]
    return "\n".join("  ".join(line) for line in cells)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rows = [r for r in load_outcomes(*args.outcomes) if r.model == args.model]
    if not rows:
        raise SystemExit(f"no outcomes for model {args.model!r}")
    stream = build_stream(rows, prompts=args.prompts, paraphrases=args.paraphrases, exact=args.exact,
                          twins=args.twins, seed=args.seed)
    mix: dict[str, int] = {}
    hows: dict[str, int] = {}
    for item in stream:
        mix[item.kind] = mix.get(item.kind, 0) + 1
        if item.kind == "twin":
            key = item.how.split(" ")[0] + (" swap" if item.how.startswith("option") else "")
            hows[key] = hows.get(key, 0) + 1
    legs = []
    progress = not args.json and not args.no_progress
    for name in args.legs:
        if name == "off":
            legs.append(await run_leg("off", stream, model=args.model, source_rows=rows,
                                      cache=CacheConfig(enabled=False), ask=None, progress=progress))
        elif name == "default":
            legs.append(await run_leg("default", stream, model=args.model, source_rows=rows, cache=CacheConfig(),
                                      ask=None, progress=progress))
        else:
            legs.append(await run_leg("semantic", stream, model=args.model, source_rows=rows,
                                      cache=CacheConfig(semantic=True), ask="semantic", progress=progress))
    return {"model": args.model, "prompts": args.prompts, "seed": args.seed, "stream": mix, "twins": hows,
            "legs": [leg.summary() for leg in legs], "_legs": legs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=3000, help="distinct original prompts")
    parser.add_argument("--paraphrases", type=float, default=0.20, help="share of paraphrased repeats")
    parser.add_argument("--exact", type=float, default=0.10, help="share of verbatim repeats")
    parser.add_argument("--twins", type=float, default=0.05, help="share of near-miss twins")
    parser.add_argument("--model", default="meta/llama-2-70b-chat")
    parser.add_argument("--outcomes", nargs="+", default=[str(p) for p in FILES])
    parser.add_argument("--legs", nargs="+", default=["off", "default", "semantic"],
                        choices=["off", "default", "semantic"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(main_async(args))
    legs = result.pop("_legs")
    if args.json:
        print(json.dumps(result))
        return
    print(f"model {result['model']}, {sum(result['stream'].values())} requests: {result['stream']}; "
          f"twins {result['twins']}")
    print(table(legs))
    for leg in legs:
        s = leg.summary()
        print(f"{leg.name}: hits by request kind {s['by_kind']}; halves {s['halves']}")
        if s["thresholds"]:
            print(f"{leg.name}: thresholds {s['thresholds']}")
            print(f"{leg.name}: verified candidates by request kind {s['verifications']}")
            print(f"{leg.name}: the guard on each paraphrase/twin against its original {s['guard_vs_original']}")
        for example in s["false_examples"]:
            print(f"{leg.name}: FALSE HIT {example}")


if __name__ == "__main__":
    main()
