"""Hardware profiles: seconds per decode step and watts, as functions of the running batch size.

A :class:`StepProfile` is built either from ML.ENERGY leaderboard measurements (vLLM, one
(model, GPU, GPU count) series over batch limits) or from a memory-bandwidth roofline.

*Measured.* For each configuration, the effective step time is ``avg_batch_size /
output_throughput`` (it includes the prefill work interleaved with decoding at that load, so
throughput and energy per token come out right), and the power is ``avg_power_watts`` (all GPUs).
Both are interpolated piecewise-linearly in the batch size; below the smallest measured batch the
step time follows the line through the first two points (never below half the first), above the
largest it follows the line through the last two; power is held at the nearest end.

*Roofline*, for a GPU or a model that was not measured: when the model was measured on another GPU,
its step times are scaled by the ratio of total memory bandwidths (decode is bandwidth-bound) and its
power by the ratio of the GPUs' board powers; otherwise the step time is
``(weight bytes + b · KV bytes per sequence) / (GPUs · bandwidth · efficiency)`` and the power is
``GPUs · (idle + (TDP − idle) · (0.55 + 0.35 · min(1, b / 256)))`` (a stated guess).

Usage::

    catalog = ProfileCatalog.shipped()                   # or ProfileCatalog.from_dir(path)
    profile = catalog.profile(model="meta-llama/Llama-3.1-8B-Instruct", gpu="H100", gpus=1)
    profile.step_s(64), profile.watts(64), profile.idle_w
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wattwise.data import shipped_path
from wattwise.exceptions import WattwiseError


class ProfileError(WattwiseError):
    """A model or GPU the simulator cannot model; ``where`` names the file, line and field."""

    status = 400
    error_type = "invalid_request_error"


@dataclass(frozen=True, kw_only=True)
class Gpu:
    """Data-sheet figures of one GPU (SXM), and a stated idle draw and rental price."""

    name: str
    bandwidth_tb_s: float
    tdp_w: float
    idle_w: float
    memory_gb: float
    bf16_tflops: float
    usd_per_hour: float


# Idle draw and $/hour are stated assumptions (typical SXM idle; 2025 cloud on-demand order of magnitude).
GPUS: dict[str, Gpu] = {g.name: g for g in (
    Gpu(name="A100", bandwidth_tb_s=2.04, tdp_w=400, idle_w=55, memory_gb=80, bf16_tflops=312, usd_per_hour=1.8),
    Gpu(name="H100", bandwidth_tb_s=3.35, tdp_w=700, idle_w=75, memory_gb=80, bf16_tflops=989, usd_per_hour=2.5),
    Gpu(name="H200", bandwidth_tb_s=4.8, tdp_w=700, idle_w=75, memory_gb=141, bf16_tflops=989, usd_per_hour=3.3),
    Gpu(name="B200", bandwidth_tb_s=8.0, tdp_w=1000, idle_w=120, memory_gb=180, bf16_tflops=2250, usd_per_hour=5.0),
)}


def gpu_named(name: str) -> Gpu:
    """The GPU by name (case-insensitive); an unknown GPU is a :class:`ProfileError`."""
    try:
        return GPUS[name.upper()]
    except KeyError:
        raise ProfileError(f"unknown GPU {name!r} (known: {', '.join(GPUS)})", param="gpu") from None


@dataclass(frozen=True, kw_only=True)
class Point:
    """One measured configuration: batch limit, mean running batch, effective step time, power."""

    max_num_seqs: int
    batch: float
    step_s: float
    watts: float
    tokens_per_s: float
    joules_per_token: float


@dataclass(frozen=True, kw_only=True)
class StepProfile:
    """Step time and power over batch size for one model on one replica shape."""

    model: str
    gpu: Gpu
    gpus: int
    source: str
    points: tuple[Point, ...] = ()
    active_params_b: float = 0.0
    roofline: dict[str, float] = field(default_factory=dict)

    @property
    def idle_w(self) -> float:
        return self.gpu.idle_w * self.gpus

    def step_s(self, batch: float) -> float:
        """Seconds per decode step (one token for each running sequence) at this batch size."""
        if not self.points:
            r = self.roofline
            return (r["weight_bytes"] + batch * r["kv_bytes"]) / (self.gpus * self.gpu.bandwidth_tb_s * 1e12 * r["eff"])
        return _interp(self.points, batch, lambda p: p.step_s, extrapolate=True)

    def watts(self, batch: float) -> float:
        """Power of the replica's GPUs while running ``batch`` sequences (idle power at 0)."""
        if batch <= 0:
            return self.idle_w
        if not self.points:
            g = self.gpu
            share = 0.55 + 0.35 * min(1.0, batch / 256.0)
            return self.gpus * (g.idle_w + (g.tdp_w - g.idle_w) * share)
        return _interp(self.points, batch, lambda p: p.watts, extrapolate=False)

    def prefill_s(self, tokens: int, *, mfu: float = 0.5) -> float:
        """Latency of prefilling ``tokens`` prompt tokens, compute-bound at ``mfu`` of peak bf16."""
        flops = 2.0 * self.active_params_b * 1e9 * tokens
        return flops / (self.gpus * self.gpu.bf16_tflops * 1e12 * mfu)

    def table(self, limit: int) -> tuple[list[float], list[float]]:
        """Step time and power for batch sizes 0..limit, for O(1) lookups in the engine."""
        steps = [self.step_s(max(b, 1)) for b in range(limit + 1)]
        watts = [self.watts(b) for b in range(limit + 1)]
        return steps, watts


def _interp(points: tuple[Point, ...], x: float, get: Any, *, extrapolate: bool) -> float:
    xs = [p.batch for p in points]
    if len(points) == 1:
        return float(get(points[0]) * (max(x, 1.0) / xs[0] if extrapolate and x > xs[0] else 1.0))
    i = bisect.bisect_left(xs, x)
    if 0 < i < len(xs):
        lo, hi = points[i - 1], points[i]
    elif i == 0:
        if not extrapolate:
            return float(get(points[0]))
        lo, hi = points[0], points[1]
    else:
        if not extrapolate:
            return float(get(points[-1]))
        lo, hi = points[-2], points[-1]
    y0, y1 = get(lo), get(hi)
    y = y0 + (y1 - y0) * (x - lo.batch) / (hi.batch - lo.batch)
    return float(max(y, 0.5 * get(points[0])))


def points_of(configs: list[dict[str, Any]]) -> tuple[Point, ...]:
    out = []
    for c in configs:
        tps = float(c["output_throughput_tokens_per_sec"])
        batch = float(c["avg_batch_size"])
        out.append(Point(max_num_seqs=int(c["max_num_seqs"]), batch=batch, step_s=batch / tps,
                         watts=float(c["avg_power_watts"]), tokens_per_s=tps,
                         joules_per_token=float(c["energy_per_token_joules"])))
    return tuple(sorted(out, key=lambda p: p.batch))


class ProfileCatalog:
    """ML.ENERGY result files by model id: ``<org>__<model>__<task>.json``."""

    def __init__(self, *, files: dict[str, dict[str, Any]]) -> None:
        self.files = files  # model id -> parsed file (one task per model: the first found, chat preferred)

    @classmethod
    def from_dir(cls, path: str | Path) -> ProfileCatalog:
        files: dict[str, dict[str, Any]] = {}
        for f in sorted(Path(path).glob("*__*__*.json"), key=lambda p: ("lm-arena-chat" not in p.name, p.name)):
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ProfileError(f"{f}: not a readable ML.ENERGY file ({exc})") from None
            files.setdefault(str(data.get("model_id", f.name)), data)
        return cls(files=files)

    @classmethod
    def shipped(cls) -> ProfileCatalog:
        return cls.from_dir(shipped_path("energy"))

    def shapes(self, model: str) -> list[tuple[str, int]]:
        data = self.files.get(model)
        return sorted({(c["gpu_model"], int(c["num_gpus"])) for c in data["configurations"]}) if data else []

    def measured(self, model: str, gpu_name: str, gpus: int, *,
                 exclude: frozenset[int] = frozenset()) -> tuple[Point, ...]:
        data = self.files.get(model)
        if data is None:
            return ()
        return points_of([c for c in data["configurations"] if c["gpu_model"] == gpu_name
                          and int(c["num_gpus"]) == gpus and int(c["max_num_seqs"]) not in exclude])

    def active_params(self, model: str) -> float:
        data = self.files.get(model, {})
        return float(data.get("activated_params_billions") or data.get("total_params_billions") or 0.0)

    def profile(self, *, model: str, gpu: str, gpus: int, params_b: float | None = None,
                active_params_b: float | None = None, bytes_per_param: float = 2.0,
                kv_bytes_per_seq: float | None = None) -> StepProfile:
        """Measured where ML.ENERGY has this shape, else scaled from another GPU, else a roofline."""
        target = gpu_named(gpu)
        active = active_params_b or self.active_params(model) or params_b or 0.0
        points = self.measured(model, target.name, gpus)
        if points:
            return StepProfile(model=model, gpu=target, gpus=gpus, source="measured", points=points,
                               active_params_b=active)
        shapes = self.shapes(model)
        if shapes:
            # The nearest measured shape: same GPU count first, then the closest memory bandwidth.
            src_name, src_gpus = min(shapes, key=lambda s: (s[1] != gpus, abs(math.log(
                GPUS[s[0]].bandwidth_tb_s / target.bandwidth_tb_s)) if s[0] in GPUS else 9.0))
            return self._scaled(model, GPUS[src_name], src_gpus, target, gpus, active)
        if not params_b:
            raise ProfileError(f"model {model!r} has no ML.ENERGY profile and no roofline parameters "
                               "(give params_b)", param="params_b")
        # Stated default: ~1,000 tokens of context at 250 KB a token for a 70B-class model, scaled by size.
        kv = kv_bytes_per_seq if kv_bytes_per_seq is not None else 2.5e8 * params_b / 70.0
        return StepProfile(model=model, gpu=target, gpus=gpus, source="roofline", active_params_b=active or params_b,
                           roofline={"weight_bytes": params_b * 1e9 * bytes_per_param, "kv_bytes": kv, "eff": 0.6})

    def _scaled(self, model: str, src: Gpu, src_gpus: int, dst: Gpu, gpus: int, active: float) -> StepProfile:
        return scaled_profile(model, self.measured(model, src.name, src_gpus), src=src, src_gpus=src_gpus,
                              dst=dst, gpus=gpus, active_params_b=active)


def scaled_profile(model: str, points: tuple[Point, ...], *, src: Gpu, src_gpus: int, dst: Gpu, gpus: int,
                   active_params_b: float = 0.0) -> StepProfile:
    """A measured series moved to another GPU shape: step times by total bandwidth, power by board power."""
    speed = (dst.bandwidth_tb_s * gpus) / (src.bandwidth_tb_s * src_gpus)
    power = (dst.tdp_w * gpus) / (src.tdp_w * src_gpus)
    moved = tuple(Point(max_num_seqs=p.max_num_seqs, batch=p.batch, step_s=p.step_s / speed,
                        watts=p.watts * power, tokens_per_s=p.tokens_per_s * speed,
                        joules_per_token=p.joules_per_token * power / speed) for p in points)
    return StepProfile(model=model, gpu=dst, gpus=gpus, source=f"roofline-scaled from {src_gpus}x{src.name}",
                       points=moved, active_params_b=active_params_b)
