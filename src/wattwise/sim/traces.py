"""Request traces for the simulator: arrival times (seconds from the start) and token counts.

Formats, picked by :func:`load_trace` from the path:

* **Azure LLM 2023** CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``), times relative to the first row;
* **ServeGen** directory of ``chunk-N-trace.csv`` files, one per client, one row per window
  (``timestamp,rate,cv,dist,arg1,arg2``): each client's inter-arrival times are drawn from the window's
  fitted distribution (``Gamma`` or ``Weibull`` with shape ``arg1``; an empty ``dist`` is Poisson), then
  rescaled so that the window's mean rate holds; token counts come from the stated length distributions
  (:class:`Lengths`), since ServeGen's language traces carry rates only;
* **Mooncake-style** JSONL (``timestamp`` in ms, ``input_length``, ``output_length``);
* **outcomes** files (``*.jsonl`` / ``*.jsonl.gz`` with ``prompt_id``): one request per prompt, at
  Poisson arrivals of ``rate`` per second, its tokens and the model recorded for it (see ``--policy``).

``scale`` thins the traffic (``0.1`` keeps one request in ten on average, by stretching ServeGen
inter-arrival times or sampling rows); ``hours`` and ``start_h`` cut a window.

Usage::

    trace = load_trace("traces/servegen_m-large", scale=0.1, hours=24, seed=1)
    trace.arrival_s[:3], trace.input_tokens[:3], trace.output_tokens[:3], trace.duration_s
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from wattwise.exceptions import WattwiseError


class TraceError(WattwiseError):
    """A trace that does not parse: names the file, line and field."""

    status = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, path: str | Path, line: int | None = None, field: str | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        text = f"{where}: {message}" + (f" (field '{field}')" if field else "")
        super().__init__(text, param=field)


@dataclass(frozen=True, kw_only=True)
class Lengths:
    """Token-length distributions for traces without token counts: log-normal, clipped.

    Defaults (stated, not measured for ServeGen m-large): input median 1,024 (σ 1.0, 16..32,768),
    output median 250 (σ 0.8, 1..4,096).
    """

    input_median: float = 1024.0
    input_sigma: float = 1.0
    output_median: float = 250.0
    output_sigma: float = 0.8

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        inp = np.clip(rng.lognormal(np.log(self.input_median), self.input_sigma, n), 16, 32768)
        out = np.clip(rng.lognormal(np.log(self.output_median), self.output_sigma, n), 1, 4096)
        return inp.astype(np.int64), out.astype(np.int64)


@dataclass(frozen=True, kw_only=True)
class Trace:
    """Requests sorted by arrival; ``model`` per request only for outcomes traces."""

    name: str
    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    duration_s: float
    model: list[str] | None = None
    prompt_id: list[str] | None = None
    prompts: list[str] | None = None
    tokens: dict[str, dict[str, tuple[int, int]]] | None = None

    def __len__(self) -> int:
        return len(self.arrival_s)


def load_trace(path: str | Path, *, scale: float = 1.0, hours: float | None = None, start_h: float = 0.0,
               seed: int = 0, lengths: Lengths | None = None, rate: float = 1.0,
               outcomes_model: str | None = None) -> Trace:
    """Load any supported trace; see the module docstring for formats and options."""
    p = Path(path)
    if not p.exists():
        raise TraceError("no such file or directory", path=p)
    rng = np.random.default_rng(seed)
    if p.is_dir():
        return servegen(p, scale=scale, hours=hours, start_h=start_h, rng=rng, lengths=lengths or Lengths())
    name = p.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json")):
        first = _first_json(p)
        if "prompt_id" in first:
            return outcomes(p, rate=rate * scale, rng=rng, model=outcomes_model)
        return _window(mooncake(p), scale=scale, hours=hours, start_h=start_h, rng=rng)
    if name.endswith(".csv"):
        return _window(azure(p), scale=scale, hours=hours, start_h=start_h, rng=rng)
    raise TraceError("unknown trace format (expected .csv, .jsonl[.gz] or a ServeGen directory)", path=p)


def _open(path: Path) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return list(fh)


def _first_json(path: Path) -> dict[str, object]:
    for number, line in enumerate(_open(path), start=1):
        if line.strip():
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise TraceError(f"not JSON ({exc.args[0]})", path=path, line=number) from None
            if not isinstance(value, dict):
                raise TraceError("each line must be a JSON object", path=path, line=number)
            return value
    raise TraceError("empty trace", path=path)


def _make(name: str, t: list[float], inp: list[int], out: list[int], duration: float | None = None) -> Trace:
    order = np.argsort(np.asarray(t, dtype=np.float64), kind="stable")
    arrival = np.asarray(t, dtype=np.float64)[order]
    arrival -= arrival[0] if len(arrival) else 0.0
    span = float(arrival[-1]) if len(arrival) else 0.0
    return Trace(name=name, arrival_s=arrival, input_tokens=np.asarray(inp, dtype=np.int64)[order],
                 output_tokens=np.asarray(out, dtype=np.int64)[order], duration_s=duration or span)


def _int_field(value: str, *, path: Path, line: int, field: str) -> int:
    try:
        n = int(float(value))
    except ValueError:
        raise TraceError(f"not a number: {value!r}", path=path, line=line, field=field) from None
    if n < 0:
        raise TraceError(f"negative: {value!r}", path=path, line=line, field=field)
    return n


def azure(path: Path) -> Trace:
    """Azure LLM inference trace 2023: ``TIMESTAMP,ContextTokens,GeneratedTokens``."""
    t: list[float] = []
    inp: list[int] = []
    out: list[int] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} - set(reader.fieldnames or [])
        if missing:
            raise TraceError("missing column", path=path, line=1, field=sorted(missing)[0])
        for number, row in enumerate(reader, start=2):
            stamp = row["TIMESTAMP"]
            try:
                t.append(datetime.fromisoformat(stamp[:26]).timestamp())
            except (ValueError, TypeError):
                raise TraceError(f"bad timestamp {stamp!r}", path=path, line=number, field="TIMESTAMP") from None
            inp.append(_int_field(row["ContextTokens"], path=path, line=number, field="ContextTokens"))
            out.append(max(1, _int_field(row["GeneratedTokens"], path=path, line=number, field="GeneratedTokens")))
    return _make(path.stem, t, inp, out)


def mooncake(path: Path) -> Trace:
    """Mooncake-style JSONL: ``timestamp`` (ms), ``input_length``, ``output_length`` per line."""
    t: list[float] = []
    inp: list[int] = []
    out: list[int] = []
    for number, line in enumerate(_open(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise TraceError(f"not JSON ({exc.args[0]})", path=path, line=number) from None
        for field in ("timestamp", "input_length", "output_length"):
            if not isinstance(row.get(field), int | float) or isinstance(row.get(field), bool):
                raise TraceError("missing or not a number", path=path, line=number, field=field)
        t.append(float(row["timestamp"]) / 1000.0)
        inp.append(int(row["input_length"]))
        out.append(max(1, int(row["output_length"])))
    return _make(path.stem, t, inp, out)


def outcomes(path: Path, *, rate: float, rng: np.random.Generator, model: str | None) -> Trace:
    """One request per prompt of an outcomes file, at Poisson arrivals of ``rate`` per second.

    ``tokens`` keeps each model's recorded (input, output) tokens per prompt, so that a routing policy
    can pick the model (:func:`wattwise.sim.route.route_trace`); until then each request carries the
    tokens of ``model``'s row (or the prompt's first row).
    """
    from wattwise.outcomes import iter_outcomes

    tokens: dict[str, dict[str, tuple[int, int]]] = {}
    prompts: dict[str, str] = {}
    for row in iter_outcomes(path):
        inp = row.input_tokens if row.input_tokens is not None else max(1, len(row.prompt) // 4)
        tokens.setdefault(row.prompt_id, {})[row.model] = (inp, max(1, row.output_tokens or 1))
        prompts.setdefault(row.prompt_id, row.prompt)
    if model is not None:
        tokens = {pid: per for pid, per in tokens.items() if model in per}
    if not tokens:
        raise TraceError(f"no rows{f' for model {model!r}' if model else ''}", path=path, field="model")
    ids = list(tokens)
    chosen = [model if model is not None else next(iter(tokens[pid])) for pid in ids]
    t = np.cumsum(rng.exponential(1.0 / max(rate, 1e-9), len(ids)))
    return Trace(name=path.name, arrival_s=t - t[0], duration_s=float(t[-1] - t[0]),
                 input_tokens=np.asarray([tokens[pid][m][0] for pid, m in zip(ids, chosen, strict=True)]),
                 output_tokens=np.asarray([tokens[pid][m][1] for pid, m in zip(ids, chosen, strict=True)]),
                 model=chosen, prompt_id=ids, prompts=[prompts[pid] for pid in ids], tokens=tokens)


def _window(trace: Trace, *, scale: float, hours: float | None, start_h: float, rng: np.random.Generator) -> Trace:
    t = trace.arrival_s
    lo = start_h * 3600.0
    hi = lo + hours * 3600.0 if hours else float("inf")
    keep = (t >= lo) & (t < hi)
    if scale < 1.0:
        keep &= rng.random(len(t)) < scale
    duration = (min(hi, trace.duration_s) - lo) if hours else trace.duration_s - lo
    return Trace(name=trace.name, arrival_s=t[keep] - lo, input_tokens=trace.input_tokens[keep],
                 output_tokens=trace.output_tokens[keep], duration_s=max(duration, 0.0))


def _unit_mean(dist: str, shape: float) -> float:
    if dist == "Gamma":
        return shape
    return float(_gamma_fn(1.0 + 1.0 / shape))


def _gamma_fn(x: float) -> float:
    import math

    return math.gamma(x)


def _draw_iats(rng: np.random.Generator, dist: str, shape: float, n: int) -> np.ndarray:
    if dist == "Gamma":
        return rng.gamma(shape, 1.0, n)
    if dist == "Weibull":
        return rng.weibull(shape, n)
    return rng.exponential(1.0, n)


def window_arrivals(rng: np.random.Generator, *, rate: float, length_s: float, dist: str, shape: float) -> np.ndarray:
    """Arrival offsets in ``[0, length_s)`` of a renewal process with mean rate ``rate``."""
    if dist not in ("Gamma", "Weibull") or shape <= 0:
        dist, shape = "Exponential", 1.0
    mean = 1.0 if dist == "Exponential" else _unit_mean(dist, shape)
    expected = rate * length_s
    parts: list[np.ndarray] = []
    t0 = -rng.random() * mean / rate  # a random phase, so windows do not all start with an arrival
    while True:
        n = int(expected * 1.2 + 4.0 * np.sqrt(expected) + 8)
        times = t0 + np.cumsum(_draw_iats(rng, dist, shape, n)) / (mean * rate)
        parts.append(times)
        if times[-1] >= length_s:
            break
        t0 = float(times[-1])
    out = np.concatenate(parts)
    return out[(out >= 0.0) & (out < length_s)]


def servegen(path: Path, *, scale: float, hours: float | None, start_h: float, rng: np.random.Generator,
             lengths: Lengths) -> Trace:
    """A ServeGen directory (one ``chunk-N-trace.csv`` per client) turned into arrivals."""
    files = sorted(path.glob("chunk-*-trace.csv"), key=lambda f: int(f.name.split("-")[1]))
    if not files:
        raise TraceError("no chunk-N-trace.csv files in this directory", path=path)
    lo = start_h * 3600.0
    hi = lo + hours * 3600.0 if hours else float("inf")
    parts: list[np.ndarray] = []
    end = lo
    for f in files:
        rows = _servegen_rows(f)
        step = rows[1][0] - rows[0][0] if len(rows) > 1 else 600.0
        for ts, rate, dist, shape in rows:
            if ts < lo or ts >= hi:
                continue
            end = max(end, ts + step)
            if rate > 0:
                parts.append(ts - lo + window_arrivals(rng, rate=rate * scale, length_s=step, dist=dist, shape=shape))
    arrival = np.sort(np.concatenate(parts)) if parts else np.zeros(0)
    inp, out = lengths.draw(rng, len(arrival))
    duration = (min(hi, end) if hours else end) - lo
    return Trace(name=path.name, arrival_s=arrival, input_tokens=inp, output_tokens=out, duration_s=duration)


def _servegen_rows(path: Path) -> list[tuple[float, float, str, float]]:
    rows = []
    names = ("timestamp", "rate", "cv", "dist", "arg1", "arg2")
    with path.open(encoding="utf-8", newline="") as fh:
        for number, row in enumerate(csv.reader(fh), start=1):
            if not row or (number == 1 and row[0] == "timestamp"):
                continue
            if len(row) != 6:
                raise TraceError(f"expected 6 fields, got {len(row)}", path=path, line=number)
            values = []
            for i in (0, 1, 4):
                try:
                    values.append(float(row[i]))
                except ValueError:
                    raise TraceError(f"not a number: {row[i]!r}", path=path, line=number, field=names[i]) from None
            if values[1] < 0:
                raise TraceError("negative rate", path=path, line=number, field="rate")
            rows.append((values[0], values[1], row[3], values[2]))
    return rows
