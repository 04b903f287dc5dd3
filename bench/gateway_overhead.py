"""Gateway overhead: direct calls vs wattwise vs LiteLLM's proxy, against one mock upstream on loopback.

In one run it measures, for each system in front of the same mock upstream (bench/mock_upstream.py):

* latency at a fixed offered load of 200 requests/s (open loop, on the freshly started server after
  a 5 s warm-up), p50 and p99, and the latency the gateway adds over direct calls at the same rate;
  a server that falls 2 s of requests behind is marked as not sustaining the rate;
* then the highest sustained request rate: wrk, closed loop, at several connection counts, best rate
  among the runs with no error at all;
* wattwise's resident memory (the process and its children) sampled every 10,000 requests over
  100,000 requests on a fresh process, against the reading after the first 10,000 (warm-up).

wattwise runs as ``wattwise serve`` with tracing on an SQLite store (content stored) and its write-ahead
trace journal on (as shipped), then once more with the journal off (``wattwise-nojournal``: the
journal's cost is the difference between the two rows), then with access control on: a key required,
with a dollar and a joule budget and request and token rate limits checked (and reserved, settled)
on every request, the state in the process (``wattwise-access``) and in Redis (``wattwise-redis``):
access control's cost is the difference from the ``wattwise`` row; LiteLLM's proxy
runs from its own hash-pinned venv (bench/.venv-litellm, built on first use), one uvicorn worker, no
database, spend logs and telemetry off. Usage::

    .venv/bin/python bench/gateway_overhead.py            # full run, a few minutes
    .venv/bin/python bench/gateway_overhead.py --quick    # smoke run, seconds per leg
    .venv/bin/python bench/gateway_overhead.py --skip-litellm --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import (
    ClientPool,
    LatencyRun,
    PeakRate,
    chat_body,
    chat_request,
    closed_loop,
    open_loop,
    wrk_peak,
)
from report import render_table
from servers import (
    Server,
    ServerError,
    ensure_litellm_env,
    forget_redis_keys,
    litellm_pin,
    redis_reachable,
    rss_kib,
    start_litellm,
    start_mock,
    start_wattwise,
)

HOST = "127.0.0.1"
LATENCY_RATE = 200.0


@dataclass(frozen=True)
class Plan:
    """How long and how hard each leg runs."""

    connections: tuple[int, ...]
    peak_s: float
    latency_s: float
    latency_warmup_s: float
    memory_total: int
    memory_every: int
    memory_concurrency: int = 8

    @classmethod
    def full(cls) -> Plan:
        """Return the full run's plan (the figures docs/benchmarks.md records)."""
        return cls(
            connections=(1, 4, 16, 64),
            peak_s=5,
            latency_s=30,
            latency_warmup_s=5,
            memory_total=100_000,
            memory_every=10_000,
        )

    @classmethod
    def quick(cls) -> Plan:
        """Return a smoke run's plan: a few seconds a leg."""
        return cls(
            connections=(8,),
            peak_s=2,
            latency_s=3,
            latency_warmup_s=1,
            memory_total=10_000,
            memory_every=1_000,
        )


@dataclass
class Leg:
    """What was measured for one system (None where a measurement was skipped)."""

    name: str
    peak: PeakRate | None = None
    latency: LatencyRun | None = None
    note: str = ""
    foreign_cpu_pct: dict[str, float | None] = field(default_factory=dict)


@dataclass
class MemoryRun:
    """wattwise's RSS (KiB) after each batch of requests, the first sample before any request."""

    samples: list[tuple[int, int]] = field(default_factory=list)
    errors: int = 0
    every: int = 0
    foreign_cpu_pct: float | None = None


def run_async(factory: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine on uvloop when installed (as the servers do), else on asyncio's loop."""
    try:
        import uvloop  # optional: a cheaper client leaves more CPU to the servers
    except ImportError:
        return asyncio.run(factory())
    return uvloop.run(factory())


def log(message: str) -> None:
    """Print progress on stderr, so that stdout carries only the table or the JSON object."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure_latency(server: Server, model: str, plan: Plan) -> LatencyRun:
    """Warm up, then run the open-loop generator at 200 requests/s against ``server``."""
    payload = chat_request(HOST, server.port, server.chat_path, model, server.api_key)

    async def go() -> LatencyRun:
        pool = ClientPool(HOST, server.port)
        await open_loop(pool, payload, rate=LATENCY_RATE, duration=plan.latency_warmup_s)
        run = await open_loop(pool, payload, rate=LATENCY_RATE, duration=plan.latency_s)
        pool.close()
        return run

    return run_async(go)


def measure_peak(server: Server, model: str, plan: Plan) -> PeakRate:
    """Find the highest error-free closed-loop rate with wrk."""
    url = f"http://{HOST}:{server.port}{server.chat_path}"
    return wrk_peak(url, chat_body(model), connections=list(plan.connections), duration=plan.peak_s,
                    api_key=server.api_key)


def measure_leg(name: str, server: Server, model: str, plan: Plan, pids: list[int]) -> Leg:
    """Measure latency at 200 requests/s on the fresh server, then its peak rate.

    ``pids`` are the live servers of this leg, whose CPU time is ours, not other processes'.
    """
    log(f"{name}: latency at {LATENCY_RATE:.0f} req/s for {plan.latency_s:g} s")
    watch = CpuWatch(pids)
    leg = Leg(name=name, latency=measure_latency(server, model, plan))
    leg.foreign_cpu_pct["latency"] = watch.foreign_pct()
    if not leg.latency.kept_up:
        leg.note = (
            f"did not sustain {LATENCY_RATE:.0f} req/s: {leg.latency.achieved_rate:,.0f} req/s answered,"
            f" {leg.latency.errors} errors{', stopped when 2 s behind' if leg.latency.aborted else ''}"
        )
        log(f"{name}: {leg.note}")
    log(f"{name}: peak rate with wrk at {list(plan.connections)} connections, {plan.peak_s:g} s each")
    watch = CpuWatch(pids)
    leg.peak = measure_peak(server, model, plan)
    leg.foreign_cpu_pct["peak"] = watch.foreign_pct()
    log(f"{name}: peak {leg.peak.rate:,.0f} req/s")
    return leg


def measure_memory(workdir: Path, upstream: Server, plan: Plan) -> MemoryRun:
    """Drive a fresh wattwise through ``memory_total`` requests, sampling its RSS after each batch."""
    gateway = start_wattwise(workdir, upstream_port=upstream.port, tag="wattwise-memory")
    payload = chat_request(HOST, gateway.port, gateway.chat_path, "mock")
    memory = MemoryRun(samples=[(0, rss_kib(gateway.pid))], every=plan.memory_every)

    async def go() -> None:
        pool = ClientPool(HOST, gateway.port)
        for done in range(plan.memory_every, plan.memory_total + 1, plan.memory_every):
            memory.errors += await closed_loop(
                pool, payload, total=plan.memory_every, concurrency=plan.memory_concurrency
            )
            memory.samples.append((done, rss_kib(gateway.pid)))
            log(f"memory: {done:,} requests, RSS {memory.samples[-1][1] / 1024:.1f} MiB")
        pool.close()

    watch = CpuWatch([upstream.pid, gateway.pid])
    try:
        run_async(go)
        memory.foreign_cpu_pct = watch.foreign_pct()
    finally:
        gateway.stop()
    return memory


def machine_note() -> dict[str, Any]:
    """Describe the machine the run used."""
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines() if "model name" in ln),
        platform.processor(),
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "loadavg_at_start": _read("/proc/loadavg").split()[:3],
        "idle_pct_at_start": idle_pct(),
    }


def cpu_ticks() -> tuple[int, int]:
    """Return (busy, total) CPU ticks of the whole machine since boot, from /proc/stat."""
    fields = [int(value) for value in (_read("/proc/stat").splitlines() or ["cpu 0"])[0].split()[1:9]]
    idle = sum(fields[3:5])
    return sum(fields) - idle, sum(fields)


def process_cpu_s(pid: int) -> float:
    """Return the CPU seconds a live process has used (0 when it is gone)."""
    fields = _read(f"/proc/{pid}/stat").rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if len(fields) > 12 else 0.0


class CpuWatch:
    """Measures the share of CPU capacity other processes used during a phase of the run.

    Ours are this process, its reaped children (wrk) and the live servers named by pid.

    Example::

        watch = CpuWatch([mock.pid, gateway.pid])
        ...
        print(watch.foreign_pct())
    """

    def __init__(self, pids: list[int]) -> None:
        """Take the starting readings."""
        self.pids = pids
        self.start = cpu_ticks(), self._ours()

    def _ours(self) -> float:
        """Return the CPU seconds used so far by this run's processes."""
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        live = sum(process_cpu_s(pid) for pid in self.pids)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + live

    def foreign_pct(self) -> float | None:
        """Return other processes' share (%) of the machine's CPU capacity since the start."""
        (busy0, total0), ours0 = self.start
        busy1, total1 = cpu_ticks()
        if total1 <= total0:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        foreign = (busy1 - busy0) / tick - (self._ours() - ours0)
        return round(max(0.0, 100 * foreign / ((total1 - total0) / tick)), 1)


def idle_pct(seconds: float = 2.0) -> float | None:
    """Return the share of CPU time (all cores) left idle over ``seconds``: others' load shows here."""

    def snapshot() -> list[int]:
        fields = _read("/proc/stat").splitlines()[0].split()[1:]
        return [int(value) for value in fields]

    before = snapshot()
    time.sleep(seconds)
    after = snapshot()
    if len(before) < 5 or len(after) < 5:
        return None
    deltas = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(deltas[:8])
    return round(100 * (deltas[3] + deltas[4]) / total, 1) if total else None


def _read(path: str) -> str:
    """Return a file's text, or an empty string when it cannot be read."""
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def last_line(text: str) -> str:
    """Return the last non-blank line of a message (a traceback's exception line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_wattwise_legs(workdir: Path, mock: Server, plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    """Measure wattwise (rate and latency on one process, memory on a fresh one)."""
    out: dict[str, Any] = {}
    try:
        gateway = start_wattwise(workdir, upstream_port=mock.port)
    except ServerError as error:
        log(f"wattwise could not start: {error}")
        out["wattwise"] = Leg(name="wattwise", note=f"did not start: {last_line(str(error))}")
        return out
    try:
        out["wattwise"] = measure_leg("wattwise", gateway, "mock", plan, [mock.pid, gateway.pid])
    finally:
        gateway.stop()
    if args.journal_compare:
        bare = start_wattwise(workdir, upstream_port=mock.port, tag="wattwise-nojournal", journal=False)
        try:
            out["wattwise-nojournal"] = measure_leg("wattwise-nojournal", bare, "mock", plan, [mock.pid, bare.pid])
        finally:
            bare.stop()
    if args.access_compare:
        out.update(run_access_legs(workdir, mock, plan, args))
    if not args.skip_memory:
        log(f"wattwise: memory over {plan.memory_total:,} requests on a fresh process")
        out["memory"] = measure_memory(workdir, mock, plan)
    return out


def run_access_legs(workdir: Path, mock: Server, plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    """wattwise with access control on (a key, its budgets and rate limits checked on every request):
    state in the process (``wattwise-access``), then in Redis (``wattwise-redis``)."""
    out: dict[str, Any] = {}
    legs = [("wattwise-access", "")]
    if redis_reachable(args.redis_url):
        legs.append(("wattwise-redis", args.redis_url))
    else:
        log(f"no Redis at {args.redis_url}: the wattwise-redis leg is left out")
    for name, state_url in legs:
        try:
            server = start_wattwise(workdir, upstream_port=mock.port, tag=name, state_url=state_url)
        except ServerError as error:
            log(f"{name} could not start: {error}")
            out[name] = Leg(name=name, note=f"did not start: {last_line(str(error))}")
            continue
        try:
            out[name] = measure_leg(name, server, "mock", plan, [mock.pid, server.pid])
        finally:
            server.stop()
            if state_url and server.key_id:
                forget_redis_keys(state_url, server.key_id)
    return out


def run_litellm_leg(workdir: Path, mock: Server, plan: Plan) -> Leg:
    """Measure LiteLLM's proxy, installing its pinned venv first if needed."""
    command = ensure_litellm_env(workdir / "litellm-install.log")
    log(f"starting LiteLLM {litellm_pin()}")
    try:
        proxy = start_litellm(workdir, upstream_port=mock.port, command=command)
    except ServerError as error:
        log(f"LiteLLM could not start: {error}")
        return Leg(name="litellm", note=f"did not start: {last_line(str(error))}")
    try:
        return measure_leg("litellm", proxy, "mock", plan, [mock.pid, proxy.pid])
    finally:
        proxy.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every leg against one mock upstream and return the results."""
    plan = Plan.quick() if args.quick else Plan.full()
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "plan": plan,
        "machine": machine_note(),
    }
    with tempfile.TemporaryDirectory(prefix="wattwise-bench-") as tmp:
        workdir = Path(tmp)
        mock = start_mock(workdir)
        try:
            results["direct"] = measure_leg("direct", mock, "mock-model", plan, [mock.pid])
            if not args.skip_wattwise:
                results.update(run_wattwise_legs(workdir, mock, plan, args))
            if not args.skip_litellm:
                results["litellm"] = run_litellm_leg(workdir, mock, plan)
                results["litellm_version"] = litellm_pin()
        finally:
            mock.stop()
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (a few seconds per leg)")
    parser.add_argument("--skip-litellm", action="store_true", help="leave LiteLLM's proxy out")
    parser.add_argument("--skip-wattwise", action="store_true", help="leave wattwise out (mock and peer only)")
    parser.add_argument("--skip-memory", action="store_true", help="leave the memory run out")
    parser.add_argument("--no-journal-compare", dest="journal_compare", action="store_false",
                        help="leave out the second wattwise leg with the trace journal off")
    parser.add_argument("--no-access-compare", dest="access_compare", action="store_false",
                        help="leave out the wattwise legs with access control on (in-process and Redis state)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                        help="Redis for the wattwise-redis leg (left out when none answers)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--save", metavar="PATH", help="also write the JSON object to PATH")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table (or JSON); exit 2 when a tool is missing."""
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):  # unwind through the finally blocks that stop servers
        signal.signal(signum, lambda num, _frame: sys.exit(128 + num))
    if shutil.which("wrk") is None:
        print("wrk not found: install it (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    results = run(args)
    summary = render_table(results)
    if args.save:
        Path(args.save).write_text(json.dumps(summary["json"], indent=2) + "\n")
    if args.json:
        print(json.dumps(summary["json"], indent=2))
    else:
        print(summary["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
