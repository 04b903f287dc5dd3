"""Hardware profiles: seconds per decode step and watts, as functions of the running batch size.

A :class:`StepProfile` is built either from ML.ENERGY leaderboard measurements (vLLM, one
(model, GPU, GPU count) series over batch limits) or from a memory-bandwidth roofline.

*Measured.* For each configuration, the effective step time is ``avg_batch_size /
output_throughput`` and the power is ``avg_power_watts`` (all GPUs). Both are interpolated
piecewise-linearly in the batch size; below the smallest measured batch the step time follows the
line through the first two points (never below half the first), above the largest it follows the
line through the last two; power is held at the nearest end.

*Decode step versus prefill.* The measured effective step time is steady state: it already holds the
prefill of the benchmark's own prompts, interleaved with decoding. The engine charges prefill
separately (per admitted prompt token), so it must not get it twice: :meth:`StepProfile.decode_step_s`
takes the benchmark's share back out. Per running sequence and step the benchmark prefilled
``prompt / output`` tokens (its mean prompt length, stated per task in :data:`BENCH_PROMPT_TOKENS`,
over its measured mean output length), each costing ``2 · active params`` FLOPs at ``mfu`` of the
replica's peak dense bf16; so ``decode(b) = effective(b) − b · (prompt / output) · prefill_s_per_token``.
At the benchmark's own mix, decode plus prefill gives back the measured step time exactly. The
stated prompt length of ``lm-arena-chat`` (250 tokens) is the one at which this decode step matches
vLLM's measured median inter-token latency on the dense models (8B to 405B: 180 to 350 tokens at
``mfu`` 0.5).

Peak dense bf16 (data sheets, SXM, no sparsity): H100 989 TFLOPS, H200 989 TFLOPS (the same die),
B200 2,250 TFLOPS.

*Roofline*, for a GPU or a model that was not measured: when the model was measured on another GPU,
its step times are scaled by the ratio of total memory bandwidths (decode is bandwidth-bound) and its
power by the ratio of the GPUs' board powers; otherwise the step time is
``(weight bytes + b · KV bytes per sequence) / (GPUs · bandwidth · efficiency)`` and the power is
``GPUs · (idle + (TDP − idle) · (0.55 + 0.35 · min(1, b / 256)))`` (a stated guess).

Usage::

    catalog = ProfileCatalog.shipped()                   # or ProfileCatalog.from_dir(path)
    profile = catalog.profile(model="meta-llama/Llama-3.1-8B-Instruct", gpu="H100", gpus=1)
    profile.step_s(64), profile.watts(64), profile.idle_w
    profile.decode_step_s(64, mfu=0.5), profile.prefill_s(1000, mfu=0.5)
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


# Mean prompt tokens of each ML.ENERGY v3 task (stated, not in the files): lm-arena-chat fitted to the
# median inter-token latency (see the module docstring); gpqa and sourcegraph-fim are guesses, and
# matter little for gpqa (thousands of output tokens a prompt).
BENCH_PROMPT_TOKENS: dict[str, float] = {"lm-arena-chat": 250.0, "gpqa": 300.0, "sourcegraph-fim": 2000.0}

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
    output_len: float = 0.0
    itl_s: float = 0.0


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
    # Prefill seconds at 100% of peak that the benchmark put into each running sequence's step (on the
    # measured GPU, moved with the step times for a scaled profile), and the prompt tokens behind them.
    mix_prefill_s: float = 0.0
    mix_tokens: float = 0.0

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

    def prefill_s(self, tokens: float, *, mfu: float = 0.5) -> float:
        """GPU time of prefilling ``tokens`` prompt tokens, compute-bound at ``mfu`` of peak dense bf16."""
        return prefill_seconds(tokens, active_params_b=self.active_params_b, gpu=self.gpu, gpus=self.gpus, mfu=mfu)

    def mix_step_s(self, batch: float, *, mfu: float = 0.5) -> float:
        """Prefill time the benchmark's prompt mix put into one step at this batch size."""
        return batch * self.mix_prefill_s / mfu

    def mix_here_s(self, batch: float, *, mfu: float = 0.5) -> float:
        """The benchmark's prompt mix in one step at this batch size, prefilled at this profile's FLOPs."""
        return batch * self.mix_tokens * self.prefill_s(1, mfu=mfu)

    def decode_step_s(self, batch: float, *, mfu: float = 0.5) -> float:
        """Seconds of one pure decode step: the effective step less the benchmark's prefill share."""
        step = self.step_s(batch)
        return max(step - self.mix_step_s(batch, mfu=mfu), 0.3 * step)

    def table(self, limit: int, *, mfu: float = 0.5) -> tuple[list[float], list[float]]:
        """Decode step time and power for batch sizes 0..limit, for O(1) lookups in the engine."""
        steps = [self.decode_step_s(max(b, 1), mfu=mfu) for b in range(limit + 1)]
        watts = [self.watts(b) for b in range(limit + 1)]
        return steps, watts


def prefill_seconds(tokens: float, *, active_params_b: float, gpu: Gpu, gpus: int, mfu: float = 0.5) -> float:
    """Compute-bound prefill: ``2 · active params`` FLOPs a token at ``mfu`` of the GPUs' peak dense bf16."""
    return 2.0 * active_params_b * 1e9 * tokens / (gpus * gpu.bf16_tflops * 1e12 * mfu)


def mix_tokens(points: tuple[Point, ...], prompt_tokens: float) -> float:
    """Prompt tokens per running sequence and step in a measured series: prompt ÷ mean output length."""
    outputs = [p.output_len for p in points if p.output_len > 0]
    return prompt_tokens / (sum(outputs) / len(outputs)) if outputs and prompt_tokens > 0 else 0.0


def mix_prefill(points: tuple[Point, ...], *, prompt_tokens: float, active_params_b: float, gpu: Gpu,
                gpus: int) -> float:
    """Prefill seconds (at 100% of peak) per running sequence and step in a measured series."""
    per_step = mix_tokens(points, prompt_tokens)
    return prefill_seconds(per_step, active_params_b=active_params_b, gpu=gpu, gpus=gpus, mfu=1.0)


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
                         joules_per_token=float(c["energy_per_token_joules"]),
                         output_len=float(c.get("avg_output_len") or 0.0),
                         itl_s=float(c.get("median_itl_ms") or 0.0) / 1000.0))
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

    def prompt_tokens(self, model: str) -> float:
        """The stated mean prompt length of the benchmark task this model's file measured."""
        task = str(self.files.get(model, {}).get("task", "lm-arena-chat"))
        return BENCH_PROMPT_TOKENS.get(task, BENCH_PROMPT_TOKENS["lm-arena-chat"])

    def profile(self, *, model: str, gpu: str, gpus: int, params_b: float | None = None,
                active_params_b: float | None = None, bytes_per_param: float = 2.0,
                kv_bytes_per_seq: float | None = None) -> StepProfile:
        """Measured where ML.ENERGY has this shape, else scaled from another GPU, else a roofline."""
        target = gpu_named(gpu)
        active = active_params_b or self.active_params(model) or params_b or 0.0
        points = self.measured(model, target.name, gpus)
        if points:
            mix = mix_prefill(points, prompt_tokens=self.prompt_tokens(model), active_params_b=active, gpu=target,
                              gpus=gpus)
            return StepProfile(model=model, gpu=target, gpus=gpus, source="measured", points=points,
                               active_params_b=active, mix_prefill_s=mix,
                               mix_tokens=mix_tokens(points, self.prompt_tokens(model)))
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
                              dst=dst, gpus=gpus, active_params_b=active, prompt_tokens=self.prompt_tokens(model))


def scaled_profile(model: str, points: tuple[Point, ...], *, src: Gpu, src_gpus: int, dst: Gpu, gpus: int,
                   active_params_b: float = 0.0, prompt_tokens: float = 0.0) -> StepProfile:
    """A measured series moved to another GPU shape: step times by total bandwidth, power by board power.

    The benchmark's prefill share is taken out on the measured GPU, so the decode step scales by
    bandwidth alone (prefill on the new GPU is charged by the engine at that GPU's FLOPs).
    """
    speed = (dst.bandwidth_tb_s * gpus) / (src.bandwidth_tb_s * src_gpus)
    power = (dst.tdp_w * gpus) / (src.tdp_w * src_gpus)
    moved = tuple(Point(max_num_seqs=p.max_num_seqs, batch=p.batch, step_s=p.step_s / speed,
                        watts=p.watts * power, tokens_per_s=p.tokens_per_s * speed,
                        joules_per_token=p.joules_per_token * power / speed, output_len=p.output_len)
                  for p in points)
    mix = mix_prefill(points, prompt_tokens=prompt_tokens, active_params_b=active_params_b, gpu=src, gpus=src_gpus)
    return StepProfile(model=model, gpu=dst, gpus=gpus, source=f"roofline-scaled from {src_gpus}x{src.name}",
                       points=moved, active_params_b=active_params_b, mix_prefill_s=mix / speed,
                       mix_tokens=mix_tokens(points, prompt_tokens))
