"""Pass-through fidelity: what an OpenAI-compatible upstream says reaches the client unchanged (but for
``model`` and wattwise's extras), and what the client sends reaches the upstream as sent.

Each case reproduces a defect seen with real clients: streamed tool calls dropped, reasoning_content and
logprobs dropped, max_completion_tokens renamed, refusal/system_fingerprint/service_tier dropped,
content "" instead of null, user not forwarded, n > 1 refused, missing endpoints.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from wattwise.api.app import create_app
from wattwise.backends.openai_http import OpenAIHTTPBackend
from wattwise.backends.transport import MockRequest, MockTransport
from wattwise.config import CacheConfig, Config, ModelConfig, PriceConfig, StoreConfig
from wattwise.gateway import Gateway
from wattwise.store.sql import TraceStore

pytestmark = pytest.mark.anyio

Handler = Callable[[MockRequest], Any]
MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
USAGE = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30,
         "prompt_tokens_details": {"cached_tokens": 8}, "completion_tokens_details": {"reasoning_tokens": 4}}
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
LOGPROBS = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}], "refusal": None}


def sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
    return (body + ("data: [DONE]\n\n" if done else "")).encode()


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "gpt-up",
            "system_fingerprint": "fp_1", "service_tier": "default",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}


TOOL_STREAM = [
    chunk({"role": "assistant", "content": None, "reasoning_content": "think"}),
    chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    chunk({}, "tool_calls"),
    {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "gpt-up", "choices": [],
     "usage": USAGE},
]


class Upstream:
    """A scripted upstream: records every body and answers with ``reply(request)``."""

    def __init__(self, reply: Handler) -> None:
        self.reply = reply
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: MockRequest) -> Any:
        self.bodies.append(request.json)
        return self.reply(request)


@asynccontextmanager
async def serve_upstream(store: TraceStore, reply: Handler, *, upstream_model: str = "gpt-up",
                         cache: CacheConfig | None = None, prepare: Callable[[Gateway], None] | None = None
                         ) -> AsyncIterator[tuple[httpx.AsyncClient, Upstream, Gateway]]:
    """A gateway with one pass-through model ``up`` over a scripted upstream, and a client for it."""
    upstream = Upstream(reply)
    backend = OpenAIHTTPBackend(name="up", base_url="http://upstream/v1", upstream_model=upstream_model,
                                api_key="sk-secret-key-123456", transport=MockTransport(upstream))
    config = Config(store=StoreConfig(url=store.url, flush_interval_s=0.01), cache=cache or CacheConfig(), models={
        "up": ModelConfig(backend="openai_http", base_url="http://upstream/v1", upstream_model=upstream_model,
                          price=PriceConfig(input=1.0, output=2.0, cached_input=0.5))})
    gateway = Gateway(config=config, backends={"up": backend}, store=store)
    if prepare is not None:
        prepare(gateway)
    await gateway.start()
    try:
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://wattwise") as client:
            yield client, upstream, gateway
    finally:
        await gateway.stop()


@pytest.fixture
def make_client(store: TraceStore) -> Callable[[Handler], Any]:
    return lambda reply: serve_upstream(store, reply)


def events(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


async def test_streamed_tool_calls_reasoning_and_fields_reach_the_client(make_client: Any) -> None:
    async with make_client(lambda r: (200, sse(*TOOL_STREAM), {"content-type": "text/event-stream"})) as (
            client, _, gateway):
        response = await client.post("/v1/chat/completions", json={
            "model": "up", "messages": MSG, "stream": True, "tools": [{"type": "function", "function": {
                "name": "get_weather", "parameters": {"type": "object"}}}]})
        got = events(response.text)
        assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
        # Every chunk as the upstream sent it, but for model; the usage chunk dropped (not asked for).
        expected = [{**c, "model": "up"} for c in TOOL_STREAM[:-1]]
        assert got == expected
        gateway.writer.flush()
        row = gateway.store.get(response.headers["x-wattwise-request-id"])
        assert row is not None and row.status == "ok" and row.output_tokens == 10 and row.reasoning_tokens == 4


async def test_stream_usage_chunk_passes_with_wattwise_extras_when_asked(make_client: Any) -> None:
    async with make_client(lambda r: (200, sse(*TOOL_STREAM))) as (client, upstream, _):
        response = await client.post("/v1/chat/completions", json={
            "model": "up", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}})
        got = events(response.text)
        assert got[-1]["usage"] == USAGE and got[-1]["model"] == "up"
        assert got[-1]["wattwise"]["cost_usd"] == pytest.approx((12 * 1.0 + 8 * 0.5 + 10 * 2.0) / 1e6)
        assert upstream.bodies[0]["stream_options"] == {"include_usage": True}


async def test_stream_logprobs_pass_through(make_client: Any) -> None:
    chunks = [chunk({"role": "assistant", "content": "Hi"}), chunk({}, "stop")]
    chunks[0]["choices"][0]["logprobs"] = LOGPROBS
    async with make_client(lambda r: (200, sse(*chunks))) as (client, _, _gw):
        response = await client.post("/v1/chat/completions", json={
            "model": "up", "messages": MSG, "stream": True, "logprobs": True, "top_logprobs": 2})
        assert events(response.text)[0]["choices"][0]["logprobs"] == LOGPROBS


async def test_non_stream_body_unchanged_but_model(make_client: Any) -> None:
    answer = {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "gpt-up",
              "system_fingerprint": "fp_1", "service_tier": "default", "future_field": {"x": 1},
              "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": LOGPROBS,
                           "message": {"role": "assistant", "content": None, "refusal": None,
                                       "tool_calls": [TOOL_CALL]}}],
              "usage": USAGE}
    async with make_client(lambda r: (200, json.dumps(answer).encode())) as (client, upstream, _):
        response = await client.post("/v1/chat/completions", json={
            "model": "up", "messages": MSG, "max_completion_tokens": 50, "user": "u-1", "store": False,
            "metadata": {"k": "v"}, "reasoning_effort": "low"})
        body = response.json()
        wattwise = body.pop("wattwise")
        assert body == {**answer, "model": "up"}
        assert body["choices"][0]["message"]["content"] is None
        assert wattwise["cost_source"] == "priced"
        sent = upstream.bodies[0]
        assert sent["max_completion_tokens"] == 50 and "max_tokens" not in sent
        assert sent["user"] == "u-1" and sent["store"] is False and sent["metadata"] == {"k": "v"}
        assert sent["reasoning_effort"] == "low" and sent["model"] == "gpt-up" and "wattwise" not in sent


async def test_n_greater_than_one_goes_upstream(make_client: Any) -> None:
    def reply(request: MockRequest) -> tuple[int, bytes]:
        n = request.json["n"]
        choices = [{"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": f"a{i}"}}
                   for i in range(n)]
        return 200, json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-up",
                                "choices": choices, "usage": USAGE}).encode()

    async with make_client(reply) as (client, upstream, _):
        response = await client.post("/v1/chat/completions", json={"model": "up", "messages": MSG, "n": 3})
        assert response.status_code == 200
        assert [c["message"]["content"] for c in response.json()["choices"]] == ["a0", "a1", "a2"]
        assert upstream.bodies[0]["n"] == 3


@pytest.mark.parametrize(("path", "body", "answer"), [
    ("/v1/embeddings", {"input": "hello"},
     {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}], "model": "gpt-up",
      "usage": {"prompt_tokens": 2, "total_tokens": 2}}),
    ("/v1/completions", {"prompt": "Say hi", "max_tokens": 3},
     {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-up",
      "choices": [{"index": 0, "text": " hi", "finish_reason": "stop", "logprobs": None}],
      "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}),
    ("/v1/responses", {"input": "Say hi"},
     {"id": "resp_1", "object": "response", "model": "gpt-up", "status": "completed", "output": [],
      "usage": {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2,
                "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 7}}),
])
async def test_other_endpoints_are_proxied_metered_and_recorded(make_client: Any, path: str, body: dict[str, Any],
                                                               answer: dict[str, Any]) -> None:
    async with make_client(lambda r: (200, json.dumps(answer).encode())) as (client, upstream, gateway):
        response = await client.post(path, json={"model": "up", **body})
        assert response.status_code == 200, response.text
        got = response.json()
        got.pop("wattwise")
        assert got == {**answer, "model": "up"}
        assert upstream.bodies[0] == {**body, "model": "gpt-up"}
        assert float(response.headers["x-wattwise-cost-usd"]) > 0
        gateway.writer.flush()
        row = gateway.store.get(response.headers["x-wattwise-request-id"])
        assert row is not None and row.status == "ok" and row.input_tokens == answer["usage"].get(
            "prompt_tokens", answer["usage"].get("input_tokens"))
        assert path in (row.route_reason or "")


async def test_streamed_completions_forward_lines_and_meter_usage(make_client: Any) -> None:
    lines = sse({"id": "c", "object": "text_completion", "model": "gpt-up",
                 "choices": [{"index": 0, "text": "hi", "finish_reason": None}]},
                {"id": "c", "object": "text_completion", "model": "gpt-up", "choices": [],
                 "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
    async with make_client(lambda r: (200, lines)) as (client, _, gateway):
        response = await client.post("/v1/completions", json={"model": "up", "prompt": "x", "stream": True})
        assert response.content == lines
        gateway.writer.flush()
        row = gateway.store.get(response.headers["x-wattwise-request-id"])
        assert row is not None and row.status == "ok" and row.output_tokens == 1


async def test_models_by_id(make_client: Any) -> None:
    async with make_client(lambda r: (200, b"{}")) as (client, _, _gw):
        assert (await client.get("/v1/models/up")).json()["id"] == "up"
        assert (await client.get("/v1/models/auto")).json()["id"] == "auto"
        missing = await client.get("/v1/models/nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
