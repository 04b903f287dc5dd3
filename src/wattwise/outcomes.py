"""Outcomes files: one model's result on one prompt per JSON line, optionally gzip-compressed.

The router trains on them, ``eval`` reads them, the replay backend answers from them and the trace
store exports them. Format: ``prompt_id``, ``task``, ``prompt``, ``model``, ``score`` (0..1) are
required; ``cost_usd``, ``input_tokens``, ``output_tokens``, ``response`` may be null or absent.

Usage::

    rows = load_outcomes("data/outcomes/routerbench_zs.test.jsonl.gz")
    write_outcomes("out.jsonl.gz", rows)
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from wattwise.exceptions import OutcomesError

REQUIRED = ("prompt_id", "task", "prompt", "model", "score")


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """One model's recorded result on one prompt."""

    prompt_id: str
    task: str
    prompt: str
    model: str
    score: float
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    response: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _open(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return path.open(mode, encoding="utf-8")


def _optional_number(obj: dict[str, Any], name: str, kind: type, where: tuple[str, int]) -> Any:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OutcomesError(f"field '{name}' must be a number or null, got {value!r}",
                            path=where[0], line=where[1], field=name)
    if value < 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise OutcomesError(f"field '{name}' must be a non-negative number, got {value!r}",
                            path=where[0], line=where[1], field=name)
    return kind(value)


def parse_line(text: str, *, path: str = "<outcomes>", line: int = 1) -> Outcome:
    """Parse and validate one line; errors name the file, line and field."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OutcomesError(f"not valid JSON: {exc.msg}", path=path, line=line) from None
    if not isinstance(obj, dict):
        raise OutcomesError("each line must be a JSON object", path=path, line=line)
    for name in REQUIRED:
        if obj.get(name) is None:
            raise OutcomesError(f"missing field '{name}'", path=path, line=line, field=name)
    score = obj["score"]
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0.0 <= score <= 1.0:
        raise OutcomesError(f"field 'score' must be a number in 0..1, got {score!r}",
                            path=path, line=line, field="score")
    for name in ("prompt_id", "task", "prompt", "model"):
        if not isinstance(obj[name], str):
            raise OutcomesError(f"field '{name}' must be a string", path=path, line=line, field=name)
    response = obj.get("response")
    where = (path, line)
    return Outcome(
        prompt_id=obj["prompt_id"], task=obj["task"], prompt=obj["prompt"], model=obj["model"],
        score=float(score),
        cost_usd=_optional_number(obj, "cost_usd", float, where),
        input_tokens=_optional_number(obj, "input_tokens", int, where),
        output_tokens=_optional_number(obj, "output_tokens", int, where),
        response=response if isinstance(response, str) else None,
    )


def iter_outcomes(path: str | Path) -> Iterator[Outcome]:
    """Yield validated outcomes from a ``.jsonl`` or ``.jsonl.gz`` file, skipping blank lines."""
    p = Path(path)
    if not p.exists():
        raise OutcomesError("file not found", path=str(p))
    with _open(p, "r") as fh:
        for number, text in enumerate(fh, start=1):
            if text.strip():
                yield parse_line(text, path=str(p), line=number)


def load_outcomes(*paths: str | Path) -> list[Outcome]:
    """All outcomes of one or more files, in file order."""
    return [row for path in paths for row in iter_outcomes(path)]


def write_outcomes(path: str | Path, rows: Iterable[Outcome]) -> int:
    """Write rows in the outcomes format (gzip when the name ends in ``.gz``); returns the count."""
    count = 0
    with _open(Path(path), "w") as fh:
        for row in rows:
            fh.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count


def by_prompt(rows: Iterable[Outcome]) -> dict[str, dict[str, Outcome]]:
    """Group rows as ``{prompt_id: {model: outcome}}``."""
    table: dict[str, dict[str, Outcome]] = {}
    for row in rows:
        table.setdefault(row.prompt_id, {})[row.model] = row
    return table
