"""The official openai client, unmodified, through a real wattwise server to a real HTTP upstream."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from tests.upstream import UpstreamLog, upstream_app

from wattwise.api.app import create_app
from wattwise.build import build_gateway
from wattwise.config import Config, ModelConfig, PriceConfig, StoreConfig
from wattwise.gateway import Gateway
from wattwise.inprocess import serve_in_thread


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.fixture
def stack(store_url: str) -> Iterator[tuple[str, Gateway, UpstreamLog]]:
    log = UpstreamLog()
    with serve_in_thread(upstream_app(log, words=40, delay_s=0.01)) as upstream:
        config = Config(store=StoreConfig(url=store_url, flush_interval_s=0.01), models={
            "up": ModelConfig(backend="openai_http", base_url=upstream + "/v1", upstream_model="real",
                              price=PriceConfig(input=1.0, output=2.0, cached_input=0.5))})
        gateway = build_gateway(config)
        with serve_in_thread(create_app(gateway)) as base:
            yield base, gateway, log


def test_openai_client_plain_and_stream(stack: tuple[str, Gateway, UpstreamLog]) -> None:
    base, gateway, log = stack
    client = openai.OpenAI(base_url=base + "/v1", api_key="anything", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="up", messages=[{"role": "user", "content": "hi"}])
    reply = raw.parse()
    assert reply.choices[0].message.content == "one two three"
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 4
    # 8 uncached × $1 + 4 cached × $0.5 + 3 out × $2, per million
    assert float(raw.headers["x-wattwise-cost-usd"]) == pytest.approx(16e-6)
    assert raw.headers["x-wattwise-model"] == "up"
    assert log.bodies[0]["model"] == "real"

    stream = client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}], stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(f"w{i}" for i in range(40))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3

    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["param"] == "model"  # type: ignore[index]
    gateway.writer.flush()
    rows = gateway.store.fetch()
    assert [(r.status, r.stream) for r in rows] == [("ok", False), ("ok", True), ("error", False)]


def test_client_disconnect_cancels_upstream_and_is_recorded(stack: tuple[str, Gateway, UpstreamLog]) -> None:
    base, gateway, log = stack
    body = {"model": "up", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.Client(base_url=base, timeout=10) as client, \
            client.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        got = [next(lines) for _ in range(4)]
        assert any("w0" in line for line in got)
    # The upstream stream (40 words × 10 ms) must be cut short, not run to its end.
    wait_for(lambda: log.streams_cancelled == 1)
    assert log.streams_finished == 0
    wait_for(lambda: gateway.writer.written >= 1)
    [row] = gateway.store.fetch()
    assert row.status == "client_disconnected" and row.http_status == 499
    assert row.response and row.response.startswith("w0")
