"""Validation of the step model against ML.ENERGY configurations held out from the fit.

Three checks, each over every (model, GPU, GPU count) series in a folder of ML.ENERGY files:

* ``interpolation``: leave one configuration out (one batch limit), build the profile from the others,
  predict that configuration's tokens/s (``batch / step``) and J/token (``watts(batch) · step /
  batch``) at its measured mean batch size. Interior points only (bracketed by two fitted points)
  and, separately, end points (extrapolated).
* ``roofline``: predict every B200 configuration from the same model's H100 series alone, scaled by
  memory bandwidth and board power (what the simulator does for a GPU that was not measured).
* ``decode_vs_median_itl``: the pure decode step the engine uses (the measured step less the
  benchmark's prefill share) against vLLM's measured median inter-token latency, on every
  configuration of the ``lm-arena-chat`` task (a check of the stated prompt length and MFU).

ML.ENERGY's figures are steady state: their step time and energy per output token already include the
prefill of the benchmark's prompts. So the predicted step is what the engine would charge at the
benchmark's own mix, ``decode_step_s(b) + b · (prompt / output) · prefill_s_per_token`` (prefill at
the predicted GPU's FLOPs): the decode step plus that mix's prefill, counted once.

Usage::

    report = validate(ProfileCatalog.from_dir("../shared/data/energy/mlenergy_v3"))
    report["interpolation"]["mape_tokens_per_s"]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wattwise.sim.profiles import GPUS, Gpu, Point, ProfileCatalog, StepProfile, mix_prefill, mix_tokens, scaled_profile

MFU = 0.5  # the fleet files' default prefill_mfu


def _predict(profile: StepProfile, point: Point) -> tuple[float, float]:
    step = profile.decode_step_s(point.batch, mfu=MFU) + profile.mix_here_s(point.batch, mfu=MFU)
    return point.batch / step, profile.watts(point.batch) * step / point.batch


def _ape(pred: float, true: float) -> float:
    return abs(pred - true) / true * 100.0


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"n": 0}
    tps = np.asarray([r["ape_tokens_per_s"] for r in rows])
    jpt = np.asarray([r["ape_joules_per_token"] for r in rows])
    return {"n": len(rows), "mape_tokens_per_s": round(float(tps.mean()), 2),
            "mape_joules_per_token": round(float(jpt.mean()), 2),
            "p90_ape_tokens_per_s": round(float(np.percentile(tps, 90)), 2),
            "p90_ape_joules_per_token": round(float(np.percentile(jpt, 90)), 2)}


def _row(model: str, gpu: str, gpus: int, point: Point, pred: tuple[float, float]) -> dict[str, Any]:
    return {"model": model, "gpu": gpu, "gpus": gpus, "max_num_seqs": point.max_num_seqs,
            "tokens_per_s": round(point.tokens_per_s, 1), "pred_tokens_per_s": round(pred[0], 1),
            "joules_per_token": round(point.joules_per_token, 4), "pred_joules_per_token": round(pred[1], 4),
            "ape_tokens_per_s": round(_ape(pred[0], point.tokens_per_s), 2),
            "ape_joules_per_token": round(_ape(pred[1], point.joules_per_token), 2)}


def _fit(catalog: ProfileCatalog, model: str, gpu: Gpu, gpus: int, points: tuple[Point, ...]) -> StepProfile:
    active = catalog.active_params(model)
    mix = mix_prefill(points, prompt_tokens=catalog.prompt_tokens(model), active_params_b=active, gpu=gpu, gpus=gpus)
    return StepProfile(model=model, gpu=gpu, gpus=gpus, source="fit", points=points, active_params_b=active,
                       mix_prefill_s=mix, mix_tokens=mix_tokens(points, catalog.prompt_tokens(model)))


def leave_one_out(catalog: ProfileCatalog) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(interior rows, end rows): each configuration predicted from its series without it."""
    interior: list[dict[str, Any]] = []
    ends: list[dict[str, Any]] = []
    for model in catalog.files:
        for gpu_name, gpus in catalog.shapes(model):
            points = catalog.measured(model, gpu_name, gpus)
            if len(points) < 3 or gpu_name not in GPUS:
                continue
            for i, point in enumerate(points):
                rest = tuple(p for j, p in enumerate(points) if j != i)
                profile = _fit(catalog, model, GPUS[gpu_name], gpus, rest)
                row = _row(model, gpu_name, gpus, point, _predict(profile, point))
                (interior if 0 < i < len(points) - 1 else ends).append(row)
    return interior, ends


def cross_gpu(catalog: ProfileCatalog, *, src: str = "H100", dst: str = "B200") -> list[dict[str, Any]]:
    """Each ``dst`` configuration predicted from the model's ``src`` series only (bandwidth roofline)."""
    rows = []
    for model in catalog.files:
        shapes = catalog.shapes(model)
        sources = [s for s in shapes if s[0] == src]
        for gpu_name, gpus in shapes:
            if gpu_name != dst or not sources:
                continue
            src_gpus = min(sources, key=lambda s: abs(s[1] - gpus))[1]
            scaled = scaled_profile(model, catalog.measured(model, src, src_gpus), src=GPUS[src],
                                    src_gpus=src_gpus, dst=GPUS[dst], gpus=gpus,
                                    active_params_b=catalog.active_params(model),
                                    prompt_tokens=catalog.prompt_tokens(model))
            for point in catalog.measured(model, dst, gpus):
                rows.append(_row(model, dst, gpus, point, _predict(scaled, point)))
    return rows


def decode_vs_itl(catalog: ProfileCatalog, *, task: str = "lm-arena-chat") -> dict[str, Any]:
    """The engine's pure decode step against the measured median inter-token latency (APE, %)."""
    apes = []
    for model, data in catalog.files.items():
        if data.get("task") != task:
            continue
        for gpu_name, gpus in catalog.shapes(model):
            if gpu_name not in GPUS:
                continue
            profile = catalog.profile(model=model, gpu=gpu_name, gpus=gpus)
            apes += [_ape(profile.decode_step_s(p.batch, mfu=MFU), p.itl_s) for p in profile.points if p.itl_s > 0]
    if not apes:
        return {"n": 0}
    values = np.asarray(apes)
    return {"n": len(apes), "mape": round(float(values.mean()), 2),
            "p90_ape": round(float(np.percentile(values, 90)), 2)}


def validate(catalog: ProfileCatalog) -> dict[str, Any]:
    """All three checks: summaries and every row."""
    interior, ends = leave_one_out(catalog)
    roof = cross_gpu(catalog)
    return {"interpolation": _summary(interior), "extrapolation": _summary(ends), "roofline_h100_to_b200":
            _summary(roof), "decode_vs_median_itl": decode_vs_itl(catalog),
            "rows": {"interpolation": interior, "extrapolation": ends, "roofline": roof}}
