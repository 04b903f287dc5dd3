"""The demo's replay part end to end (small), through the real HTTP server."""

from __future__ import annotations

from pathlib import Path

from wattwise.demo import run_demo


def test_demo_replay_table_summary_and_plot(tmp_path: Path) -> None:
    result = run_demo(out_dir=tmp_path, limit=12, live=False)
    groups = {line["group"]: line for line in result["lines"]}
    assert "auto" in groups and len([g for g in groups if g.startswith("single:")]) == 11
    assert all(line["requests"] == 12 and line["errors"] == 0 for g, line in groups.items() if g != "TOTAL")
    best = result["summary"]["best_single"]
    assert best["quality"] == max(line["quality"] for g, line in groups.items() if g.startswith("single:"))
    auto = result["summary"]["auto"]
    assert auto["cost_usd"] == groups["auto"]["cost_usd"]
    assert auto["savings_vs_best_single"] == 1 - auto["cost_usd"] / best["cost_usd"]
    # Open-weight replay models carry an estimated energy profile; hosted ones stay unknown.
    assert groups["single:mistralai--mistral-7b-chat"]["energy_j"] > 0
    assert groups["single:gpt-4-1106-preview"]["energy_j"] is None
    assert result["auto_policy"] == ["utility"] and sum(result["auto_routes"].values()) == 12
    assert (tmp_path / "demo.png").stat().st_size > 10_000 and (tmp_path / "demo.json").exists()
