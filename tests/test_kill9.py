"""``kill -9`` of a real ``wattwise serve`` under load: every request answered 200 is in the store
after a restart on the same store (the write-ahead journal carries the rows still queued).

:func:`crash_run` is also what ``bench/kill9.py`` runs, with more requests and repeats.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tests.serving import free_port, wait_serving

from wattwise.store.sql import opened


class Server:
    """``python -m wattwise.cli serve`` as a child process, started in ``workdir`` (where PostgreSQL's
    default journal, ``./wattwise-journal``, then lies)."""

    def __init__(self, *, config: Path, workdir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "serve.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "wattwise.cli", "serve", "--config", str(config),
                                      "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_serving(self.base, self.proc, timeout_s=60)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)  # no lifespan shutdown, no drain
        assert self.proc.wait(timeout=10) == -signal.SIGKILL

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.log.close()


@dataclass
class CrashRun:
    """``answered``: ids of requests answered 200 (a stream: through ``data: [DONE]``);
    ``missing_at_kill``: those not in the store when the process died (what the journal must carry);
    ``lost``: those not in the store after the restart."""

    sent: int = 0
    answered: list[str] = field(default_factory=list)
    missing_at_kill: int = 0
    lost: list[str] = field(default_factory=list)


def write_config(workdir: Path, store_url: str, *, flush_interval_s: float) -> Path:
    config = workdir / "w.toml"
    config.write_text(f'[store]\nurl = "{store_url}"\nflush_interval_s = {flush_interval_s}\n'
                      '[batch]\nenabled = false\n'
                      '[models.m]\nbackend = "mock"\noptions = { delay_s = 0.02 }\n'
                      'price = { input = 1.0, output = 2.0 }\n')
    return config


async def one(client: httpx.AsyncClient, i: int, run: CrashRun) -> None:
    stream = i % 2 == 1
    body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": f"request {i}"}]}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            text = (await response.aread()).decode()
    except httpx.TransportError:
        return  # the server died first: not answered
    if response.status_code == 200 and (not stream or "data: [DONE]" in text):
        run.answered.append(response.headers["x-wattwise-request-id"])


async def load(server: Server, *, requests: int, rate: float, kill_at: int) -> CrashRun:
    """Open-loop requests at ``rate``/s, alternately plain and streamed; ``kill -9`` once ``kill_at`` are
    sent (counted, not timed, so a busy machine that falls behind the rate still sends as many)."""
    run = CrashRun()
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    async with httpx.AsyncClient(base_url=server.base, timeout=10, limits=limits) as client:
        start = time.monotonic()
        tasks = []
        for i in range(requests):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            if i == kill_at:
                server.kill9()
                break
            tasks.append(asyncio.create_task(one(client, i, run)))
        run.sent = len(tasks)
        await asyncio.gather(*tasks)
    return run


def stored_ids(store_url: str) -> set[str]:
    with opened(store_url) as store:
        return {record.id for record in store.fetch()}


def crash_run(*, store_url: str, workdir: Path, requests: int, rate: float, kill_at: int,
              flush_interval_s: float = 0.2) -> CrashRun:
    """Serve, load, ``kill -9`` mid-run, restart on the same store, and compare."""
    config = write_config(workdir, store_url, flush_interval_s=flush_interval_s)
    server = Server(config=config, workdir=workdir)
    try:
        run = asyncio.run(load(server, requests=requests, rate=rate, kill_at=kill_at))
    finally:
        server.close()
    run.missing_at_kill = len(set(run.answered) - stored_ids(store_url))
    restarted = Server(config=config, workdir=workdir)  # replays the dead process's journal on start
    try:
        stored = stored_ids(store_url)
    finally:
        restarted.close()
    run.lost = [rid for rid in run.answered if rid not in stored]
    return run


def test_kill9_mid_load_loses_no_answered_request(store_url: str, tmp_path: Path) -> None:
    """Seen: ``kill -9`` at 100 req/s lost 3-18 of 1,000 answered requests (rows still queued)."""
    run = crash_run(store_url=store_url, workdir=tmp_path, requests=300, rate=100, kill_at=150,
                    flush_interval_s=0.5)
    assert run.sent == 150 and len(run.answered) >= 50, run
    assert run.lost == []
    assert not list(tmp_path.rglob("*.journal")), "the restart left the dead process's journal behind"
