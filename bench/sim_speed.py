"""Simulator speed: simulated requests per wall-clock second on 24 h of ServeGen m-large.

The stated scale: one tenth of m-large's traffic (``--scale 0.1``, about 2.4 million requests in 24 h)
on ``examples/fleet-m-large.toml`` (twelve Llama 3.1 70B replicas on 4×H100, sized for that tenth).
Budget: the 24 h replay (trace generation included) in at most 60 s on a 2-core machine.

Usage::

    $ python bench/sim_speed.py [--hours 24] [--scale 0.1] [--batch-fill] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from wattwise.sim.engine import simulate
from wattwise.sim.fleet import load_fleet, profiles_for
from wattwise.sim.traces import load_trace

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT.parent / "shared" / "data" / "traces" / "servegen_m-large"
FLEET = ROOT / "examples" / "fleet-m-large.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(TRACE))
    parser.add_argument("--fleet", default=str(FLEET))
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--batch-fill", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    fleet = load_fleet(args.fleet)
    profiles = profiles_for(fleet, path=args.fleet)
    t0 = time.perf_counter()
    trace = load_trace(args.trace, scale=args.scale, hours=args.hours, seed=1)
    t1 = time.perf_counter()
    result = simulate(fleet=fleet, trace=trace, profiles=profiles, batch_fill=args.batch_fill)
    t2 = time.perf_counter()
    out = {"requests": len(trace), "hours": args.hours, "scale": args.scale, "batch_fill": args.batch_fill,
           "trace_s": round(t1 - t0, 2), "simulate_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2),
           "requests_per_s": round(len(trace) / (t2 - t1)), "budget_s": 60.0,
           "within_budget": (t2 - t0) <= 60.0, "utilization": round(result.utilization, 4),
           "prefill_share": round(result.prefill_share, 4)}
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['requests']:,} requests ({args.hours:g} h at scale {args.scale:g}): trace {out['trace_s']} s, "
          f"simulation {out['simulate_s']} s, {out['requests_per_s']:,} simulated requests/s; "
          f"total {out['total_s']} s against a 60 s budget ({'met' if out['within_budget'] else 'MISSED'})")


if __name__ == "__main__":
    main()
