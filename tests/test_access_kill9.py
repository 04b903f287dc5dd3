"""Spend survives ``kill -9``: a real ``wattwise serve`` killed while a governed request runs; after a
restart on the same store, its worst case still counts against the budget (never less)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from tests.test_kill9 import Server

from wattwise.cli import main
from wattwise.store.sql import opened

MASTER = "mk-kill9"


def _spend_rows(url: str) -> list[tuple[Any, ...]]:
    with opened(url) as store:
        cur = store.conn.cursor()
        cur.execute("SELECT request_id, state, usd FROM spend ORDER BY ts")
        return [tuple(row) for row in cur.fetchall()]


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_kill9_mid_request_keeps_its_worst_case(store_url: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATTWISE_MASTER_KEY", MASTER)
    config = tmp_path / "w.toml"
    config.write_text(f'[store]\nurl = "{store_url}"\nflush_interval_s = 0.01\n[batch]\nenabled = false\n'
                      '[models.m]\nbackend = "mock"\noptions = { delay_s = 1.5 }\n'
                      'price = { input = 1.0, output = 2.0 }\n')
    # Worst case of one request below: (2 bytes + 8) input × $1/M + 5 output × $2/M = $2e-5; metered
    # $1.1e-5 (1 word in, 5 out). The budget fits the first answer, the killed one's worst case,
    # and not a third request; without the durable reservation it would fit that one too.
    made = CliRunner().invoke(main, ["keys", "create", "--name", "k", "--budget-usd", "4.5e-05/total",
                                     "--config", str(config), "--json"], catch_exceptions=False)
    assert made.exit_code == 0, made.output
    key = json.loads(made.output)["key"]
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}

    server = Server(config=config, workdir=tmp_path)
    try:
        assert httpx.post(server.base + "/v1/chat/completions", json=body, headers=headers,
                          timeout=30).status_code == 200

        def doomed() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server dies under it
                httpx.post(server.base + "/v1/chat/completions", json=body, headers=headers, timeout=30)

        # The answer leaves before its settlement is written: wait for it, then for the second reservation.
        wait_for(lambda: [state for _, state, _ in _spend_rows(store_url)] == ["settled"])
        thread = threading.Thread(target=doomed)
        thread.start()
        wait_for(lambda: [state for _, state, _ in _spend_rows(store_url)] == ["settled", "reserved"])
        server.kill9()
        thread.join(timeout=30)
    finally:
        server.close()

    rows = _spend_rows(store_url)
    assert [state for _, state, _ in rows] == ["settled", "reserved"]
    assert rows[0][2] == pytest.approx(1.1e-5) and rows[1][2] == pytest.approx(2e-5)
    restarted = Server(config=config, workdir=tmp_path)
    try:
        refused = httpx.post(restarted.base + "/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    finally:
        restarted.close()
