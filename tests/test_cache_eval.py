"""``wattwise cache-eval`` on a tiny synthetic pairs file (wattwise.cache.cli and .evaluate)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from wattwise.cache.cli import cache_eval_command
from wattwise.cache.evaluate import baseline_at

TOPICS = ["cook rice", "learn guitar", "fix a flat tyre", "write a cover letter", "train a puppy", "grow tomatoes",
          "tie a tie", "bake bread", "clean an oven", "save money"]


def write_pairs(path: Path) -> None:
    rows = []
    for i in range(300):
        topic = TOPICS[i % len(TOPICS)]
        rows.append({"a": f"How do I {topic}?", "b": f"How can I {topic}?", "same": True, "kind": "paraphrase"})
        rows.append({"a": f"How do I {topic} in {i} minutes?", "b": f"How do I {topic} in {i + 1} minutes?",
                     "same": False, "kind": "adversarial"})
        other = TOPICS[(i + 3) % len(TOPICS)]
        rows.append({"a": f"How do I {topic}?", "b": f"How do I {other}?", "same": False, "kind": "unrelated"})
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def test_cache_eval_json_and_plot(tmp_path: Path) -> None:
    pairs, png = tmp_path / "pairs.jsonl.gz", tmp_path / "curve.png"
    write_pairs(pairs)
    result = CliRunner().invoke(cache_eval_command, [str(pairs), "--json", "--plot", str(png), "--learn-share", "0.5"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["pairs"] == 450 and report["learn_pairs"] == 450
    for key in ("hit_rate", "false_hit_rate", "adversarial_false_hit_rate"):
        assert 0.0 <= report[key] <= 1.0
    assert {"hit_rate", "false_hit_rate", "threshold"} <= set(report["baseline"])
    assert report["false_hit_rate"] == 0.0 and report["adversarial_false_hit_rate"] == 0.0
    assert report["checks"]["numbers"]["adversarial"] == 1.0
    assert png.stat().st_size > 1000


def test_cache_eval_text_and_limit(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl.gz"
    write_pairs(pairs)
    result = CliRunner().invoke(cache_eval_command, [str(pairs), "--limit", "60"])
    assert result.exit_code == 0, result.output
    assert "semantic cache" in result.output and "42 reported pairs after 18 warm-up" in result.output


def test_cache_eval_rejects_a_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(cache_eval_command, [str(tmp_path / "nope.jsonl")])
    assert result.exit_code != 0 and "cannot read pairs" in result.output


def test_baseline_stays_under_the_false_hit_rate() -> None:
    sim = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.90])
    same = np.array([True, False, True, True, False, True])
    adv = ~same
    b = baseline_at(sim, same, adv, 0.0)
    assert b["false_hit_rate"] == 0.0 and b["hit_rate"] == 0.25
    b = baseline_at(sim, same, adv, 0.5)
    assert b["false_hit_rate"] == 0.5 and b["hit_rate"] == 0.75
