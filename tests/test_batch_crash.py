"""``kill -9`` of a real ``wattwise serve`` mid-batch: after a restart (or on a surviving replica
sharing a PostgreSQL store), no line is lost and each has exactly one result.

The upstream is a counting OpenAI-compatible server in this test's process, so it outlives the
killed gateway and sees every call the gateway made. A line whose call was in flight when the
process died is called again after the restart (nothing can know whether that call happened); the
test bounds those re-runs by the lines that can be in flight at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tests.serving import free_port, wait_serving

from wattwise.inprocess import serve_in_thread
from wattwise.store.sql import opened

LINES = 120
CONCURRENCY = 4


def counting_upstream(seen: list[str], *, delay_s: float) -> Starlette:
    async def chat(request: Request) -> Response:
        body = await request.json()
        seen.append(body["messages"][-1]["content"])  # counted on arrival: the call was made
        await asyncio.sleep(delay_s)
        return JSONResponse({"id": "up", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": "ok"}}],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    with serve_in_thread(counting_upstream(seen, delay_s=0.05)) as base:
        yield base, seen



class Replica:
    """``python -m wattwise.cli serve`` as a child process."""

    def __init__(self, config: Path, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "wattwise.cli", "serve", "--config", str(config),
                                      "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=config.parent)
        wait_serving(self.base, self.proc)

    def kill9(self) -> None:
        self.proc.kill()  # SIGKILL: no lifespan shutdown, no drain, no lease release
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.log.close()


def write_config(tmp_path: Path, store_url: str, upstream: str) -> Path:
    config = tmp_path / "w.toml"
    config.write_text(f'[store]\nurl = "{store_url}"\nflush_interval_s = 0.05\n'
                      f'[batch]\nmax_concurrency = {CONCURRENCY}\nlease_s = 1.0\npoll_interval_s = 0.05\n'
                      '[models.up]\nbackend = "openai_http"\n'
                      f'base_url = "{upstream}/v1"\nprice = {{ input = 1.0, output = 2.0 }}\n')
    return config


def submit(base: str) -> str:
    rows = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "up", "messages": [{"role": "user", "content": f"line-{i}"}]}} for i in range(LINES)]
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    upload = httpx.post(base + "/v1/files", files={"file": ("crash.jsonl", content)}, data={"purpose": "batch"})
    batch = httpx.post(base + "/v1/batches", json={"input_file_id": upload.json()["id"],
                                                   "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    return str(batch.json()["id"])


def wait_batch(base: str, batch_id: str, done: Any, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch = httpx.get(f"{base}/v1/batches/{batch_id}").json()
        if done(batch):
            return batch  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"batch did not get there: {batch}"
        time.sleep(0.05)


def check_exactly_one_result(base: str, batch: dict[str, Any], seen: list[str]) -> None:
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
    assert batch["error_file_id"] is None
    output = [json.loads(x) for x in httpx.get(f"{base}/v1/files/{batch['output_file_id']}/content").text.splitlines()]
    ids = Counter(o["custom_id"] for o in output)
    assert ids == Counter({f"line-{i}": 1 for i in range(LINES)})  # none lost, none twice
    assert len({o["response"]["request_id"] for o in output}) == LINES
    calls = Counter(seen)
    assert set(calls) == set(ids)
    rerun = [line for line, n in calls.items() if n > 1]
    # Only a line in flight at the kill can have been called twice; at most one per concurrency slot.
    assert len(rerun) <= CONCURRENCY and all(calls[line] == 2 for line in rerun), calls.most_common(8)


def test_kill_9_then_restart_loses_no_line_and_runs_none_twice(
        tmp_path: Path, store_url: str, upstream: tuple[str, list[str]]) -> None:
    base_up, seen = upstream
    config = write_config(tmp_path, store_url, base_up)
    first = Replica(config, tmp_path / "first.log")
    try:
        batch_id = submit(first.base)
        wait_batch(first.base, batch_id, lambda b: b["request_counts"]["completed"] >= 30)
        first.kill9()
    finally:
        first.close()
    assert len(set(seen)) < LINES  # killed mid-batch
    second = Replica(config, tmp_path / "second.log")
    try:
        batch = wait_batch(second.base, batch_id, lambda b: b["status"] == "completed")
        check_exactly_one_result(second.base, batch, seen)
    finally:
        second.close()


@pytest.mark.postgres
def test_two_replicas_share_a_postgres_queue_and_survive_a_kill(
        tmp_path: Path, pg_url: str, upstream: tuple[str, list[str]]) -> None:
    base_up, seen = upstream
    config = write_config(tmp_path, pg_url, base_up)
    a, b = Replica(config, tmp_path / "a.log"), Replica(config, tmp_path / "b.log")
    try:
        batch_id = submit(a.base)
        wait_batch(b.base, batch_id, lambda x: x["request_counts"]["completed"] >= 40)
        a.kill9()
        batch = wait_batch(b.base, batch_id, lambda x: x["status"] == "completed")
        check_exactly_one_result(b.base, batch, seen)
    finally:
        a.close()
        b.close()
    with opened(pg_url) as store:
        cur = store.conn.cursor()
        cur.execute("SELECT owner, COUNT(*) FROM batch_lines GROUP BY owner")
        owners = dict(cur.fetchall())
    assert len(owners) == 2, owners  # both replicas ran lines
