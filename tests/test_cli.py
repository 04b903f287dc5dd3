"""The command line through click's CliRunner, and `wattwise serve` as a real process (SIGTERM flush)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from tests.serving import free_port, wait_serving
from tests.test_store import record

from wattwise.cli import main, parse_since
from wattwise.store.sql import opened


def test_serve_bad_config_names_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[store]\nurl = "sqlite:///x.db"\n\n[models.m]\nbackend = "mock"\nprise = 3\n')
    result = CliRunner().invoke(main, ["serve", "--config", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:6" in result.output and "models.m.prise" in result.output


def test_serve_unknown_backend_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[models.m]\nbackend = "telepathy"\n')
    result = CliRunner().invoke(main, ["serve", "--config", str(bad)])
    assert result.exit_code == 2 and "unknown backend 'telepathy'" in result.output


def test_report_json_by_model_with_baseline(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    config = tmp_path / "w.toml"
    config.write_text(f'[store]\nurl = "{url}"\n[models.m]\nbackend = "mock"\nprice = {{ input = 1000, output = 0 }}\n')
    with opened(url) as store:
        store.insert([record(i) for i in range(4)] + [record(9, model="n", status="error", cost_usd=None)])
    result = CliRunner().invoke(main, ["report", "--config", str(config), "--baseline", "m", "--json",
                                       "--plot", str(tmp_path / "r.png")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    lines = {line["group"]: line for line in report["lines"]}
    assert lines["m"]["requests"] == 4 and lines["m"]["cost_usd"] == pytest.approx(0.04)
    assert lines["m"]["energy_j"] == pytest.approx(8.0)
    assert lines["m"]["tokens_per_joule"] == pytest.approx(60 / 8.0)
    assert lines["m"]["baseline_cost_usd"] == pytest.approx(4 * 10 * 1000 / 1e6)
    assert lines["n"]["errors"] == 1 and lines["TOTAL"]["requests"] == 5
    assert (tmp_path / "r.png").stat().st_size > 1000
    table = CliRunner().invoke(main, ["report", "--store", url, "--by", "hour"])
    assert table.exit_code == 0 and "TOTAL" in table.output


def test_export_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    with opened(url) as store:
        store.insert([record(0, score=1.0), record(1)])
    out = tmp_path / "o.jsonl"
    result = CliRunner().invoke(main, ["export", "--store", url, "--format", "outcomes", "--out", str(out)])
    assert result.exit_code == 0
    assert [json.loads(line)["prompt_id"] for line in out.read_text().splitlines()] == ["h0"]


def test_parse_since() -> None:
    now = time.time()
    assert parse_since("2h") == pytest.approx(now - 7200, abs=5)
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("2023-11-14T22:13:20") == 1_700_000_000.0
    assert parse_since(None) is None



def test_serve_flushes_traces_on_sigterm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    config = tmp_path / "w.toml"
    # A long flush interval: rows can only reach the store through the shutdown drain.
    config.write_text(f'[store]\nurl = "{url}"\nflush_interval_s = 600\nbatch_size = 100000\n'
                      '[models.m]\nbackend = "mock"\n')
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "wattwise.cli", "serve", "--config", str(config),
                             "--port", str(port)], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_serving(base, proc)
        for _ in range(25):
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            assert httpx.post(base + "/v1/chat/completions", json=body).status_code == 200
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    with opened(url) as store:
        assert store.count() == 25
