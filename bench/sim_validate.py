"""Validation of the simulator's step model against held-out ML.ENERGY configurations.

Prints the mean absolute percentage error of predicted tokens/s and J/token: leave-one-out
interpolation (interior and end points) and the bandwidth roofline (B200 from H100), each as decode
step plus the benchmark's own prefill (ML.ENERGY's figures already include it: counted once), and
the decode step alone against the measured median inter-token latency. Target: MAPE at most 10% on
held-out configurations.

Usage::

    $ python bench/sim_validate.py [--dir ../shared/data/energy/mlenergy_v3] [--json] [--worst 10]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wattwise.sim.profiles import ProfileCatalog
from wattwise.sim.validate import validate

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "energy" / "mlenergy_v3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(DATA))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worst", type=int, default=0, help="Also list the N worst interpolated points.")
    args = parser.parse_args()
    report = validate(ProfileCatalog.from_dir(args.dir))
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
        return
    print(f"{'check':<24} {'n':>4} {'MAPE tok/s':>11} {'MAPE J/tok':>11} {'p90 tok/s':>10} {'p90 J/tok':>10}")
    for name in ("interpolation", "extrapolation", "roofline_h100_to_b200"):
        s = report[name]
        print(f"{name:<24} {s['n']:>4} {s['mape_tokens_per_s']:>10.2f}% {s['mape_joules_per_token']:>10.2f}% "
              f"{s['p90_ape_tokens_per_s']:>9.2f}% {s['p90_ape_joules_per_token']:>9.2f}%")
    itl = report["decode_vs_median_itl"]
    if itl["n"]:
        print(f"decode step vs median ITL (lm-arena-chat): n {itl['n']}, MAPE {itl['mape']:.2f}%, "
              f"p90 {itl['p90_ape']:.2f}%")
    for row in sorted(report["rows"]["interpolation"], key=lambda r: -r["ape_tokens_per_s"])[: args.worst]:
        print(row)


if __name__ == "__main__":
    main()
