"""Peak memory of one large ``POST /v1/files`` upload: the process's RSS high-water mark (VmHWM)
before and after, in a fresh process, the body streamed to the app in 64 KiB chunks.

Usage::

    python bench/upload_memory.py --mb 90            # prints one JSON line
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator

import httpx

from wattwise.api.app import create_app
from wattwise.backends.mock import MockBackend
from wattwise.config import Config, ModelConfig, StoreConfig
from wattwise.gateway import Gateway
from wattwise.store.sql import open_store

BOUNDARY = "bench-boundary"


def hwm_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


async def body(size: int) -> AsyncIterator[bytes]:
    yield (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
           f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n').encode()
    line = b"y" * 65535 + b"\n"
    for _ in range(size // len(line)):
        yield line
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


async def main(mb: int, store_url: str) -> dict[str, float]:
    config = Config(store=StoreConfig(url=store_url), models={"m": ModelConfig(backend="mock")})
    gateway = Gateway(config=config, backends={"m": MockBackend(name="m")}, store=open_store(store_url))
    transport = httpx.ASGITransport(app=create_app(gateway))
    size = mb * 1024 * 1024
    async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as client:
        await client.get("/v1/files/file-warmup")  # import and connect before the baseline
        before = hwm_mb()
        started = time.perf_counter()
        response = await client.post("/v1/files", content=body(size),
                                     headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
        elapsed = time.perf_counter() - started
    assert response.status_code == 200 and response.json()["bytes"] == size, response.text[:200]
    after = hwm_mb()
    return {"upload_mb": mb, "hwm_before_mb": round(before, 1), "hwm_after_mb": round(after, 1),
            "peak_delta_mb": round(after - before, 1), "ratio_to_size": round((after - before) / mb, 2),
            "seconds": round(elapsed, 2)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=90)
    parser.add_argument("--store", default=None, help="store URL (default: SQLite in a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(main(args.mb, args.store or f"sqlite:///{tmp}/bench.db"))))
