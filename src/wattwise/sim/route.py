"""Routing decisions for outcomes traces: the gateway's trained router picks each prompt's model.

Each fleet model is a router candidate (its ``trained_as`` name, ``price_input``/``price_output``);
the router (the shipped default, or ``router_path``) picks per prompt with ``policy``, and the request
then carries that model's recorded token counts from the outcomes file.

Usage::

    routed = route_trace(trace, fleet, policy="utility", quality_target=0.8)
    routed.model[:5]
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from wattwise.routing.policies import Candidate
from wattwise.routing.router import Router
from wattwise.sim.fleet import Fleet
from wattwise.sim.traces import Trace, TraceError


def route_trace(trace: Trace, fleet: Fleet, *, policy: str, quality_target: float | None = None,
                router_path: str | None = None) -> Trace:
    """The trace with each prompt sent where the router says, among fleet models with recorded answers."""
    if trace.prompts is None or trace.tokens is None or trace.prompt_id is None:
        raise TraceError("--policy routes only outcomes traces (per-prompt, per-model records)", path=trace.name)
    router = Router.load(router_path) if router_path else Router.default()
    candidates = [Candidate(name=name, input_usd_per_mtok=spec.price_input, output_usd_per_mtok=spec.price_output,
                            trained_as=spec.trained_as or name) for name, spec in fleet.models.items()]
    models, inputs, outputs = [], [], []
    for pid, prompt in zip(trace.prompt_id, trace.prompts, strict=True):
        recorded = trace.tokens[pid]
        usable = [c for c in candidates if (c.trained_as or c.name) in recorded]
        if not usable:
            raise TraceError(f"prompt {pid!r}: no fleet model has a recorded answer", path=trace.name,
                             field="model")
        name = router.route(prompt, usable, policy=policy, quality_target=quality_target).model
        key = fleet.models[name].trained_as or name
        models.append(name)
        inputs.append(recorded[key][0])
        outputs.append(recorded[key][1])
    return replace(trace, model=models, input_tokens=np.asarray(inputs), output_tokens=np.asarray(outputs))
