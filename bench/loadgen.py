"""Load generators for the gateway benchmarks: wrk for peak rate, a raw asyncio client for the rest.

* :func:`wrk_peak` runs Debian's ``wrk`` (closed loop, one thread) at several connection counts and keeps
  the best request rate among the runs that had no error at all.
* :func:`open_loop` sends requests on a fixed schedule (e.g. 200 per second), whatever the server's
  pace, and times each response: the latency a client sees at that offered load.
* :func:`closed_loop` sends an exact number of requests with a fixed concurrency (the memory run).

Both asyncio generators speak HTTP/1.1 keep-alive over raw streams, so the client costs little CPU on
a machine whose cores it shares with the servers under test.

Example::

    payload = chat_request("127.0.0.1", 9100, "/v1/chat/completions", "mock")
    result = asyncio.run(open_loop(ClientPool("127.0.0.1", 9100), payload, rate=200, duration=5))
    print(result.percentile(50))
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CONTENT_LENGTH_RE = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
CHUNKED_RE = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)
IDLE_LIMIT_S = 3.0
PROMPT = "Say hello in five words."
WRK_MARK = "WRK_JSON "
WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def chat_body(model: str) -> bytes:
    """Return the JSON body of the benchmark's chat completion request."""
    messages = [{"role": "user", "content": PROMPT}]
    return json.dumps({"model": model, "messages": messages, "max_tokens": 16}).encode()


def chat_request(host: str, port: int, path: str, model: str, api_key: str = "bench") -> bytes:
    """Return the complete HTTP/1.1 ``POST`` of the benchmark's chat completion request."""
    body = chat_body(model)
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {api_key}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a pre-built request and reads the reply.

    Example::

        conn = await Connection.open("127.0.0.1", 9100)
        status = await conn.send(payload)
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Wrap an open stream pair."""
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        """Open a TCP connection to ``host:port``."""
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, payload: bytes) -> int:
        """Send one request, read the whole response and return its status code."""
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        match = CONTENT_LENGTH_RE.search(head)
        if match:
            await self.reader.readexactly(int(match.group(1)))
        elif CHUNKED_RE.search(head):
            await self._read_chunks()
        return int(head[9:12])

    async def _read_chunks(self) -> None:
        """Read a chunked body to its end."""
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await self.reader.readexactly(size + 2)
            if size == 0:
                return

    def close(self) -> None:
        """Close the connection."""
        self.writer.close()


class ClientPool:
    """Keep-alive connections to one server, opened on demand up to ``limit`` at once.

    Example::

        pool = ClientPool("127.0.0.1", 9100)
        status = await pool.send(payload)
        pool.close()
    """

    def __init__(self, host: str, port: int, *, limit: int = 512) -> None:
        """Remember the server; no connection is opened yet."""
        self.host = host
        self.port = port
        self._idle: list[Connection] = []
        self._slots = asyncio.Semaphore(limit)

    async def send(self, payload: bytes) -> int:
        """Send ``payload`` on an idle connection (or a new one) and return the status code."""
        async with self._slots:
            conn = self._take_idle() or await Connection.open(self.host, self.port)
            try:
                status = await conn.send(payload)
            except BaseException:
                conn.close()
                raise
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
            return status

    def _take_idle(self) -> Connection | None:
        """Return the most recently used idle connection that is still fresh and open, if any.

        Servers close keep-alive connections idle for a few seconds (uvicorn: 5 s); reusing one of
        those would fail the request, so they are dropped here, as real clients do.
        """
        while self._idle:
            conn = self._idle.pop()
            if not conn.reader.at_eof() and time.monotonic() - conn.idle_since < IDLE_LIMIT_S:
                return conn
            conn.close()
        return None

    def close(self) -> None:
        """Close every idle connection."""
        for conn in self._idle:
            conn.close()
        self._idle.clear()


@dataclass
class LatencyRun:
    """What one open-loop run measured: latencies of the successes (seconds), errors and pace."""

    rate: float
    sent: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed_s: float = 0.0
    aborted: bool = False

    def percentile(self, pct: float) -> float:
        """Return the ``pct`` percentile of the latencies in seconds (nearest rank), NaN if none."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered)) - 1))
        return ordered[rank]

    @property
    def achieved_rate(self) -> float:
        """Return the rate at which responses came back over the whole run."""
        return len(self.latencies) / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def kept_up(self) -> bool:
        """Say whether every request succeeded and the server kept pace with the offered rate."""
        return not self.aborted and self.errors == 0 and self.achieved_rate >= 0.95 * self.rate


async def _timed(pool: ClientPool, payload: bytes, timeout: float) -> float | None:
    """Send one request; return its latency in seconds, or None when it failed or timed out."""
    start = time.perf_counter()
    try:
        status = await asyncio.wait_for(pool.send(payload), timeout)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
        return None
    return time.perf_counter() - start if status == 200 else None


async def open_loop(
    pool: ClientPool, payload: bytes, *, rate: float, duration: float, timeout: float = 30.0,
    backlog_s: float = 2.0,
) -> LatencyRun:  # fmt: skip
    """Send ``rate`` requests a second for ``duration`` seconds on schedule and time each one.

    A server that falls more than ``backlog_s`` seconds of requests behind cannot sustain the rate:
    the run stops sending then (``aborted``), waits for what is in flight, and says so.
    """
    loop = asyncio.get_running_loop()
    count = max(1, round(rate * duration))
    tasks: list[asyncio.Task[float | None]] = []
    finished = [0]
    aborted = False
    with _gc_paused():
        start = loop.time()
        for index in range(count):
            delay = start + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) - finished[0] > rate * backlog_s:
                aborted = True
                break
            task = asyncio.create_task(_timed(pool, payload, timeout))
            task.add_done_callback(lambda _: finished.__setitem__(0, finished[0] + 1))
            tasks.append(task)
        outcomes = await asyncio.gather(*tasks)
        elapsed = loop.time() - start
    run = LatencyRun(rate=rate, sent=len(tasks), elapsed_s=elapsed, aborted=aborted)
    run.latencies = [o for o in outcomes if o is not None]
    run.errors = len(tasks) - len(run.latencies)
    return run


async def closed_loop(pool: ClientPool, payload: bytes, *, total: int, concurrency: int) -> int:
    """Send exactly ``total`` requests, ``concurrency`` at a time; return how many failed."""
    remaining = [total]
    failures = [0]

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            if await _timed(pool, payload, 30.0) is None:
                failures[0] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures[0]


@contextlib.contextmanager
def _gc_paused():
    """Keep the client's own garbage collector out of the timings."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass
class WrkRun:
    """One wrk run: its connection count, completed requests, errors and duration."""

    connections: int
    requests: int
    errors: int
    duration_s: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        """Return the completed requests per second."""
        return self.requests / self.duration_s if self.duration_s else 0.0


@dataclass
class PeakRate:
    """The best error-free wrk run among several connection counts (None when every run had errors)."""

    runs: list[WrkRun]

    @property
    def best(self) -> WrkRun | None:
        """Return the error-free run with the highest rate."""
        clean = [run for run in self.runs if run.errors == 0 and run.requests > 0]
        return max(clean, key=lambda run: run.rate, default=None)

    @property
    def rate(self) -> float:
        """Return the highest error-free rate, or 0 when there was none."""
        return self.best.rate if self.best else 0.0


def wrk_script(body: bytes, api_key: str = "bench") -> str:
    """Return a wrk Lua script that POSTs ``body`` as JSON and prints a JSON summary when done."""
    text = body.decode()
    assert "]==]" not in text and '"' not in api_key
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{text}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {api_key}"\n' + WRK_DONE
    )


def wrk_once(url: str, script: Path, *, connections: int, duration: float) -> WrkRun:
    """Run wrk once (one thread, closed loop) and return its summary."""
    cmd = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
        "-s", str(script), url,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith(WRK_MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    data = json.loads(line[len(WRK_MARK) :])
    errors = sum(data[key] for key in ("connect", "read", "write", "status", "timeout"))
    return WrkRun(
        connections=connections,
        requests=data["requests"],
        errors=errors,
        duration_s=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1e3,
        p99_ms=data["p99_us"] / 1e3,
    )


def wrk_peak(url: str, body: bytes, *, connections: list[int], duration: float, api_key: str = "bench") -> PeakRate:
    """Run wrk at each connection count (after a short warm-up) and collect the runs."""
    with tempfile.TemporaryDirectory(prefix="wattwise-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(wrk_script(body, api_key))
        wrk_once(url, script, connections=min(connections), duration=1)
        runs = [wrk_once(url, script, connections=c, duration=duration) for c in connections]
    return PeakRate(runs=runs)
