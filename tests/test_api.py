"""The HTTP API in-process: OpenAI schema, the four headers, error bodies, and a trace row per request."""

from __future__ import annotations

import json

import httpx
import pytest
from tests.conftest import make_gateway

from wattwise.api.app import create_app
from wattwise.backends.mock import MockBackend
from wattwise.exceptions import UpstreamError, UpstreamTimeout
from wattwise.gateway import Gateway
from wattwise.store.sql import TraceStore

pytestmark = pytest.mark.anyio
HEADERS = ("x-wattwise-request-id", "x-wattwise-model", "x-wattwise-cost-usd", "x-wattwise-energy-j")
MSG = [{"role": "user", "content": "say hello to the gateway"}]


def rows_for(gateway: Gateway) -> list:
    gateway.writer.flush()
    return gateway.store.fetch()


async def test_non_stream_completion_is_metered_and_recorded(client: httpx.AsyncClient, gateway: Gateway) -> None:
    response = await client.post("/v1/chat/completions", json={"model": "cheap", "messages": MSG})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello from the mock backend."}
    assert body["usage"]["prompt_tokens"] == 5 and body["usage"]["completion_tokens"] == 5
    # 5 in × $0.1/M + 5 out × $0.2/M; 5 × 0.01 J + 5 × 0.1 J
    assert float(response.headers["x-wattwise-cost-usd"]) == pytest.approx(1.5e-6)
    assert float(response.headers["x-wattwise-energy-j"]) == pytest.approx(0.55)
    assert response.headers["x-wattwise-energy-source"] == "estimated"
    assert response.headers["x-wattwise-model"] == "cheap"
    [row] = rows_for(gateway)
    assert row.id == response.headers["x-wattwise-request-id"]
    assert (row.model, row.status, row.http_status, row.cost_source) == ("cheap", "ok", 200, "priced")
    assert row.cost_usd == pytest.approx(1.5e-6) and row.energy_j == pytest.approx(0.55)
    assert json.loads(row.messages) == MSG and row.response == "Hello from the mock backend."
    assert row.latency_s is not None and row.latency_s >= 0


async def test_energy_unknown_without_profile(client: httpx.AsyncClient, gateway: Gateway) -> None:
    response = await client.post("/v1/chat/completions", json={"model": "dear", "messages": MSG})
    assert response.headers["x-wattwise-energy-j"] == "unknown"
    assert response.headers["x-wattwise-energy-source"] == "unknown"
    [row] = rows_for(gateway)
    assert row.energy_j is None and row.energy_source == "unknown"


async def test_stream_with_usage(client: httpx.AsyncClient, gateway: Gateway) -> None:
    body = {"model": "cheap", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for name in HEADERS:
            assert name in response.headers
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello from the mock backend."
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 5
    assert usage_chunk["wattwise"]["cost_usd"] == pytest.approx(1.5e-6)
    [row] = rows_for(gateway)
    assert row.stream and row.status == "ok" and row.ttft_s is not None
    assert row.response == "Hello from the mock backend."


async def test_stream_without_include_usage_has_no_usage_chunk(client: httpx.AsyncClient) -> None:
    body = {"model": "cheap", "messages": MSG, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        chunks = [json.loads(line[6:]) async for line in response.aiter_lines()
                  if line.startswith("data: {")]
    assert all(c["choices"] for c in chunks)


@pytest.mark.parametrize(("payload", "status", "param"), [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"messages": MSG}).encode(), 400, "model"),
    (json.dumps({"model": "cheap"}).encode(), 400, "messages"),
    (json.dumps({"model": "cheap", "messages": "hi"}).encode(), 400, "messages"),
    (json.dumps({"model": "cheap", "messages": MSG, "max_tokens": 0}).encode(), 400, "max_tokens"),
    (json.dumps({"model": "cheap", "messages": MSG, "temperature": "hot"}).encode(), 400, "temperature"),
    (json.dumps({"model": "cheap", "messages": [{"role": "robot", "content": "x"}]}).encode(), 400,
     "messages[0].role"),
    (json.dumps({"model": "nope", "messages": MSG}).encode(), 404, "model"),
    (json.dumps({"model": "cheap", "messages": MSG, "n": 3}).encode(), 400, "n"),
    (json.dumps({"model": "auto", "messages": MSG, "wattwise": {"quality_target": 1.5}}).encode(), 400,
     "wattwise.quality_target"),
])
async def test_bad_input_gets_openai_error_body(client: httpx.AsyncClient, payload: bytes, status: int,
                                                param: str | None) -> None:
    response = await client.post("/v1/chat/completions", content=payload,
                                 headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["message"]
    for name in HEADERS:
        assert name in response.headers


async def test_body_over_limit_is_413(store: TraceStore) -> None:
    gateway = make_gateway(store)
    gateway.config = gateway.config.model_copy(
        update={"server": gateway.config.server.model_copy(update={"max_body_bytes": 1000})})
    await gateway.start()
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://w") as c:
        big = {"model": "cheap", "messages": [{"role": "user", "content": "x" * 2000}]}
        response = await c.post("/v1/chat/completions", json=big)
    await gateway.stop()
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(("fail", "status"), [(UpstreamError("upstream 503"), 502),
                                              (UpstreamTimeout("too slow"), 504)])
async def test_backend_failure_maps_and_is_recorded(store: TraceStore, fail: Exception, status: int) -> None:
    gateway = make_gateway(store, backends={"cheap": MockBackend(name="cheap", fail=fail),  # type: ignore[arg-type]
                                            "dear": MockBackend(name="dear")})
    await gateway.start()
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://w") as c:
        plain = await c.post("/v1/chat/completions", json={"model": "cheap", "messages": MSG})
        streamed = await c.post("/v1/chat/completions", json={"model": "cheap", "messages": MSG, "stream": True})
    assert plain.status_code == status and streamed.status_code == status
    assert plain.json()["error"]["type"] == "upstream_error"
    rows = rows_for(gateway)
    await gateway.stop()
    assert [(r.status, r.http_status, r.model) for r in rows] == [("error", status, "cheap")] * 2
    assert all(r.error for r in rows)


async def test_unknown_model_request_is_recorded(client: httpx.AsyncClient, gateway: Gateway) -> None:
    await client.post("/v1/chat/completions", json={"model": "nope", "messages": MSG})
    [row] = rows_for(gateway)
    assert (row.requested_model, row.status, row.http_status) == ("nope", "error", 404)


async def test_models_health_metrics_and_404(client: httpx.AsyncClient) -> None:
    models = await client.get("/v1/models")
    assert [m["id"] for m in models.json()["data"]] == ["cheap", "dear", "auto"]
    assert (await client.get("/healthz")).json()["status"] == "ok"
    await client.post("/v1/chat/completions", json={"model": "cheap", "messages": MSG})
    metrics = (await client.get("/metrics")).text
    assert 'wattwise_requests_total{model="cheap",status="ok"} 1.0' in metrics
    assert 'wattwise_tokens_total{kind="output",model="cheap"} 5.0' in metrics
    missing = await client.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    for response in (models, missing):
        for name in HEADERS:
            assert name in response.headers


async def test_store_content_off_keeps_no_text(store: TraceStore) -> None:
    gateway = make_gateway(store, store_content=False)
    await gateway.start()
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://w") as c:
        await c.post("/v1/chat/completions", json={"model": "cheap", "messages": MSG})
    [row] = rows_for(gateway)
    await gateway.stop()
    assert row.messages is None and row.response is None and row.output_tokens == 5


async def test_feedback_sets_score(client: httpx.AsyncClient, gateway: Gateway) -> None:
    response = await client.post("/v1/chat/completions", json={"model": "cheap", "messages": MSG})
    request_id = response.headers["x-wattwise-request-id"]
    ok = await client.post("/v1/wattwise/feedback", json={"request_id": request_id, "score": 0.8})
    assert ok.status_code == 200
    bad = await client.post("/v1/wattwise/feedback", json={"request_id": request_id, "score": 3})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "score"
    missing = await client.post("/v1/wattwise/feedback", json={"request_id": "req_nope", "score": 1})
    assert missing.status_code == 404
    assert gateway.store.get(request_id).score == pytest.approx(0.8)  # type: ignore[union-attr]


async def test_auto_without_router_uses_named_rule(client: httpx.AsyncClient, gateway: Gateway) -> None:
    response = await client.post("/v1/chat/completions", json={"model": "auto", "messages": MSG})
    assert response.status_code == 200
    assert response.headers["x-wattwise-model"] in ("cheap", "dear")
    assert response.headers["x-wattwise-route"]


async def test_metrics_in_flight_gauge(client: httpx.AsyncClient, gateway: Gateway) -> None:
    from wattwise.request import parse_chat_body

    body = parse_chat_body(json.dumps({"model": "cheap", "messages": MSG}).encode(), max_bytes=10_000)
    async with gateway.call(body, request_id="req_open", tag=None):
        assert "wattwise_in_flight_requests 1.0" in (await client.get("/metrics")).text
    assert "wattwise_in_flight_requests 0.0" in (await client.get("/metrics")).text


async def test_header_tag_reaches_the_router_as_the_requests_application(store: TraceStore) -> None:
    from wattwise.gateway import Decision
    from wattwise.request import ChatBody
    from wattwise.routing.adapt import app_key

    seen: list[ChatBody] = []

    class Recording:
        def pick(self, *, prompt: str, policy: str, body: ChatBody, gateway: Gateway) -> Decision:
            seen.append(body)
            return Decision(model="cheap", policy="test", reason="test")

    gateway = make_gateway(store)
    gateway.router = Recording()
    await gateway.start()
    try:
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://wattwise") as client:
            response = await client.post("/v1/chat/completions", json={"model": "auto", "messages": MSG},
                                         headers={"x-wattwise-tag": "support-bot"})
            assert response.status_code == 200
    finally:
        await gateway.stop()
    # The labels of this request are keyed by its trace row's tag: the router must see the same app.
    assert app_key(seen[0]) == "support-bot" == store.get(response.headers["x-wattwise-request-id"]).tag
