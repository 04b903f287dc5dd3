"""``wattwise train --store``: the store's labels plus outcomes files, compared with the served router."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from wattwise.outcomes import Outcome, load_outcomes, write_outcomes
from wattwise.routing.cli import train_command
from wattwise.routing.flywheel import LabelRow, router_version
from wattwise.routing.router import Router
from wattwise.routing.train import train_router
from wattwise.store.labels import LabelStore, RouterRow
from wattwise.store.sql import opened


def test_train_from_the_store_promotes_once(tmp_path: Path) -> None:
    shipped = tmp_path / "shipped.jsonl"
    write_outcomes(shipped, [Outcome(prompt_id=f"{kind}{i}", task="t", prompt=f"{kind}: question {i}", model=model,
                                     score=score, cost_usd=cost)
                             for i in range(40) for kind in ("chat", "math")
                             for model, score, cost in (("small-trained", 0.9, 1e-5), ("big", 0.95, 1e-3))])
    url = f"sqlite:///{tmp_path}/traces.db"
    served = train_router(load_outcomes(shipped))  # what a gateway on this store serves now
    with opened(url) as store:
        labels = LabelStore(store=store)
        labels.add_router(RouterRow(version=router_version(served), created_at=1.0, promoted=True, serving_score=None,
                                    candidate_score=None, detail="first", body=json.dumps(served.to_json())))
        for i in range(100, 140):
            for kind, small in (("chat", 0.85), ("math", 0.1)):
                for model, score in (("small", small), ("big", 0.95)):
                    labels.add(LabelRow(prompt_id=f"{kind}{i}", prompt=f"{kind}: question {i}", model=model,
                                        score=score, cost_usd=None, energy_j=None, source="judge", ts=float(i)))
    out = tmp_path / "router.json"
    args = ["--store", url, str(shipped), "--out", str(out), "--alias", "small=small-trained", "--promote", "--json"]
    first = CliRunner().invoke(train_command, args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output)
    assert summary["promoted"] and summary["recorded"] and summary["labels"] == 160
    assert summary["candidate_score"] > summary["serving_score"]
    assert summary["serving_version"] == router_version(served)
    assert summary["version"] == router_version(Router.load(out)) != summary["serving_version"]
    assert set(Router.load(out).models()) == {"small-trained", "big"}  # labels joined the shipped heads
    with opened(url) as store:
        latest = LabelStore(store=store).latest_promoted()
        assert latest is not None and latest.version == summary["version"]

    again = CliRunner().invoke(train_command, args)  # nothing new: the same candidate cannot beat itself
    assert again.exit_code == 0, again.output
    second = json.loads(again.output)
    assert second["serving_version"] == summary["version"] and not second["promoted"]


def test_train_needs_outcomes_or_a_store(tmp_path: Path) -> None:
    result = CliRunner().invoke(train_command, ["--out", str(tmp_path / "r.json")])
    assert result.exit_code == 2 and "give OUTCOMES files, or --store" in result.output
    bad = CliRunner().invoke(train_command, ["--store", "sqlite://", "--out", "r.json", "--alias", "x"])
    assert bad.exit_code == 2 and "NAME=TRAINED_AS" in bad.output
