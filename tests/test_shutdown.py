"""SIGTERM while a stream runs: after the grace period the server cuts it, and the trace row says the
server shut down (it said ``client_disconnected`` before, blaming the client)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from tests.serving import free_port, wait_serving

from wattwise.store.sql import opened


def test_sigterm_records_cut_streams_as_shutdown(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    config = tmp_path / "w.toml"
    # 200 words at 50 ms each: 10 s of stream against a 1 s grace period.
    config.write_text(f'[server]\nshutdown_grace_s = 1\n[store]\nurl = "{url}"\n'
                      '[models.m]\nbackend = "mock"\noptions = { reply = "' + " ".join(["w"] * 200) + '", '
                      'delay_s = 0.05 }\n')
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "wattwise.cli", "serve", "--config", str(config),
                             "--port", str(port)], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    got: list[bytes] = []
    started = threading.Event()

    def stream() -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        try:
            with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=30) as response:
                for data in response.iter_bytes():
                    got.append(data)
                    started.set()
        except httpx.HTTPError:
            pass  # the server cut the stream: expected

    try:
        wait_serving(base, proc)
        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert b"[DONE]" not in b"".join(got)
    with opened(url) as store:
        rows = store.fetch()
    assert [(r.status, r.http_status) for r in rows] == [("shutdown", 503)]
