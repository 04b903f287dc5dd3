"""Client conformance: real clients, unmodified, through a real wattwise server to a faithful fake OpenAI.

One gateway (and one fake upstream) serves the whole suite; each test tags its prompts with a
unique marker and finds what reached the upstream, and its trace row, by that marker.

A client that is not installed fails the suite under ``CI=true`` and is skipped, saying why, elsewhere.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.fake_openai import FakeLog, fake_openai_app

from wattwise.api.app import create_app
from wattwise.build import build_gateway
from wattwise.config import Config, ModelConfig, PriceConfig, StoreConfig
from wattwise.gateway import Gateway
from wattwise.inprocess import serve_in_thread
from wattwise.store.records import TraceRecord

NODE_DIR = Path(__file__).parent / "node"
PRICES = {
    "fake": PriceConfig(input=1.0, output=4.0, cached_input=0.25),
    "thinker": PriceConfig(input=2.0, output=8.0, cached_input=0.5, reasoning=6.0),
}
UPSTREAM_MODEL = {"fake": "gpt-4o-fake", "thinker": "o3-fake"}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}


def need_client(name: str, problem: str | None) -> None:
    """Skip (fail under ``CI=true``) when a client is missing, saying which and how to install it."""
    if problem is None:
        return
    message = f"client conformance: {name} is not available ({problem}); run `make install install-node`"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " — required under CI=true")
    pytest.skip(message)


def import_client(module: str, name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        need_client(name, f"import {module} failed: {exc}")


@pytest.fixture
def own_event_loop() -> Iterator[None]:
    """LiteLLM's sync path calls ``asyncio.get_event_loop()``, which makes a loop it never closes (its
    socket pair then leaks into a later test's warnings): give it one we close."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def node_problem() -> str | None:
    if shutil.which("node") is None:
        return "no `node` on PATH"
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").exists():
        return f"{NODE_DIR}/node_modules/openai is missing (npm ci --prefix {NODE_DIR})"
    return None


def llm_cli() -> Path:
    path = Path(sys.executable).parent / "llm"
    need_client("llm CLI", None if path.exists() else f"{path} is missing")
    return path


def expected_cost(model: str, usage: dict[str, Any]) -> float:
    """What wattwise should charge for an upstream's OpenAI usage object, worked out by hand."""
    price = PRICES[model]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    uncached = usage["prompt_tokens"] - cached
    visible = usage["completion_tokens"] - reasoning
    cached_rate = price.input if price.cached_input is None else price.cached_input
    reasoning_rate = price.output if price.reasoning is None else price.reasoning
    return (uncached * price.input + cached * cached_rate + visible * price.output
            + reasoning * reasoning_rate) / 1e6


@dataclass
class Stack:
    """A wattwise server (``base``) in front of the fake upstream, and what the fake received."""

    base: str
    gateway: Gateway
    log: FakeLog

    @property
    def v1(self) -> str:
        return self.base + "/v1"

    def trace(self, marker: str, *, timeout: float = 10.0) -> TraceRecord:
        """The trace row of the (last) request whose messages mention ``marker``."""
        deadline = time.monotonic() + timeout
        while True:
            self.gateway.writer.flush()
            rows = [r for r in self.gateway.store.fetch() if r.messages and marker in r.messages]
            if rows:
                return rows[-1]
            assert time.monotonic() < deadline, f"no trace row mentions {marker!r}"
            time.sleep(0.05)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log = FakeLog()
    db = tmp_path_factory.mktemp("conformance") / "traces.db"
    with serve_in_thread(fake_openai_app(log)) as upstream:
        models = {name: ModelConfig(backend="openai_http", base_url=upstream + "/v1",
                                    upstream_model=UPSTREAM_MODEL[name], price=price,
                                    reasoning=name == "thinker")
                  for name, price in PRICES.items()}
        config = Config(store=StoreConfig(url=f"sqlite:///{db}", flush_interval_s=0.01), models=models)
        gateway = build_gateway(config)
        with serve_in_thread(create_app(gateway)) as base:
            yield Stack(base=base, gateway=gateway, log=log)


@pytest.fixture
def marker() -> str:
    """A unique tag for this test's prompts."""
    return "mk" + uuid.uuid4().hex[:10]
