"""The outcomes format: validation names file, line and field; round trip through gzip."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from wattwise.exceptions import OutcomesError
from wattwise.outcomes import Outcome, by_prompt, load_outcomes, write_outcomes

ROW = {"prompt_id": "p1", "task": "t", "prompt": "2+2?", "model": "m", "score": 1.0,
       "cost_usd": 0.001, "input_tokens": 3, "output_tokens": 1, "response": "4"}


def write_lines(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_round_trip_gzip(tmp_path: Path) -> None:
    rows = [Outcome(**ROW), Outcome(**{**ROW, "model": "n", "score": 0.0, "cost_usd": None})]
    assert write_outcomes(tmp_path / "o.jsonl.gz", rows) == 2
    with gzip.open(tmp_path / "o.jsonl.gz", "rt") as fh:
        assert json.loads(fh.readline())["model"] == "m"
    back = load_outcomes(tmp_path / "o.jsonl.gz")
    assert back == rows
    assert set(by_prompt(back)["p1"]) == {"m", "n"}


@pytest.mark.parametrize(("bad", "field"), [
    ({k: v for k, v in ROW.items() if k != "score"}, "score"),
    ({k: v for k, v in ROW.items() if k != "prompt"}, "prompt"),
    ({**ROW, "score": 1.5}, "score"),
    ({**ROW, "score": -0.1}, "score"),
    ({**ROW, "score": "yes"}, "score"),
    ({**ROW, "cost_usd": -1}, "cost_usd"),
    ({**ROW, "input_tokens": "many"}, "input_tokens"),
])
def test_bad_line_names_line_and_field(tmp_path: Path, bad: dict, field: str) -> None:
    path = write_lines(tmp_path / "o.jsonl", [ROW, ROW, bad])
    with pytest.raises(OutcomesError) as info:
        load_outcomes(path)
    assert info.value.line == 3 and info.value.field == field
    assert f"{path}:3" in str(info.value)


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    path.write_text(json.dumps(ROW) + "\n{oops\n")
    with pytest.raises(OutcomesError, match=":2: not valid JSON"):
        load_outcomes(path)
    with pytest.raises(OutcomesError, match="not found"):
        load_outcomes(tmp_path / "nope.jsonl")
