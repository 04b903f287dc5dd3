"""``kill -9`` under load, and what the trace journal costs per request.

Crash runs: ``wattwise serve`` (mock backend, 20 ms per answer, default ``flush_interval_s = 0.2``)
gets ``--requests`` requests at ``--rate``/s, half of them streamed, is killed with SIGKILL halfway,
and is restarted on the same store. For each run the table gives the requests answered 200, how
many of them were not in the store when the process died (what a gateway without the journal loses),
and how many are missing after the restart (must be 0).

Journal cost: :meth:`TraceWriter.submit` per call in µs with the journal off, on, and on with
``fsync``, for a typical trace row (about 1 KB of JSON).

Usage::

    .venv/bin/python bench/kill9.py                          # 3 runs per store, 1,000 requests at 100/s
    .venv/bin/python bench/kill9.py --runs 1 --requests 300 --stores sqlite
    .venv/bin/python bench/kill9.py --skip-crash              # the micro-benchmark only
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_kill9 import crash_run  # noqa: E402

from wattwise.store.records import TraceRecord  # noqa: E402
from wattwise.store.sql import TraceStore  # noqa: E402
from wattwise.store.writer import TraceWriter  # noqa: E402

PG = "postgresql://127.0.0.1/test"


def pg_schema_url() -> tuple[str, str]:
    import psycopg

    schema = "kill9_" + uuid.uuid4().hex[:10]
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return schema, f"{PG}?options=-csearch_path%3D{schema}"


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def crash_table(stores: list[str], *, runs: int, requests: int, rate: float) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for store in stores:
        for n in range(1, runs + 1):
            with tempfile.TemporaryDirectory() as tmp:
                schema, url = pg_schema_url() if store == "postgresql" else ("", f"sqlite:///{tmp}/traces.db")
                try:
                    run = crash_run(store_url=url, workdir=Path(tmp), requests=requests, rate=rate,
                                    kill_at=requests // 2)
                finally:
                    if schema:
                        drop_schema(schema)
            rows.append({"store": store, "run": n, "sent": run.sent, "answered_200": len(run.answered),
                         "not_stored_at_kill": run.missing_at_kill, "lost_after_restart": len(run.lost)})
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def typical_record(i: int) -> TraceRecord:
    messages = json.dumps([{"role": "system", "content": "You are a helpful assistant. " * 8},
                           {"role": "user", "content": f"Question {i}: what is the capital of France?"}])
    return TraceRecord(id=f"req_{uuid.uuid4().hex}", ts=time.time(), requested_model="auto", model="small",
                       route_policy="utility", route_reason="cheapest that fits", messages=messages,
                       response="Paris is the capital of France. " * 6, prompt_hash="0" * 32, input_tokens=120,
                       output_tokens=40, cost_usd=1.2e-5, cost_source="priced", energy_j=3.4,
                       energy_source="estimated", ttft_s=0.05, latency_s=0.4, calls='[{"model": "small"}]')


def submit_cost(journal: bool, *, fsync: bool, calls: int) -> tuple[float, float]:
    """Median and p99 µs of one submit() on the calling thread (the writer thread is not started,
    so nothing competes for the GIL; each call timed alone, so a busy machine shows in p99 only)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = TraceStore(url=f"sqlite:///{tmp}/t.db")
        writer = TraceWriter(store=store, journal_dir=f"{tmp}/j" if journal else "", journal_fsync=fsync)
        records = [typical_record(i) for i in range(calls)]
        if writer.journal is not None:
            writer.journal.open()
        times = []
        for record in records:
            start = time.perf_counter_ns()
            writer.submit(record)
            times.append(time.perf_counter_ns() - start)
        if writer.journal is not None:
            writer.journal.close()
    times.sort()
    return times[len(times) // 2] / 1000, times[len(times) * 99 // 100] / 1000


def cost_table(calls: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name, journal, fsync, n in [("off", False, False, calls), ("on", True, False, calls),
                                    ("on + fsync", True, True, max(200, calls // 50))]:
        p50, p99 = submit_cost(journal, fsync=fsync, calls=n)
        rows.append({"journal": name, "calls": n, "p50_us": round(p50, 1), "p99_us": round(p99, 1)})
    return rows


def render(rows: list[dict[str, object]]) -> str:
    keys = list(rows[0])
    width = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(width[k]) for k in keys), "  ".join("-" * width[k] for k in keys)]
    lines += ["  ".join(str(r[k]).ljust(width[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--calls", type=int, default=20000, help="submit() calls per micro-benchmark leg")
    parser.add_argument("--skip-crash", action="store_true")
    args = parser.parse_args()
    print(render(cost_table(args.calls)))
    if not args.skip_crash:
        print()
        print(render(crash_table(args.stores.split(","), runs=args.runs, requests=args.requests, rate=args.rate)))


if __name__ == "__main__":
    main()
