"""Upstream faults and unexpected errors: the right status, OpenAI's error body, and a trace row that
says what happened — whatever way the request ended. Each case is a defect seen before."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from wattwise.api.app import create_app
from wattwise.backends.base import Backend, ChatRequest, Completion, StreamEvent
from wattwise.backends.mock import MockBackend
from wattwise.backends.openai_http import OpenAIHTTPBackend
from wattwise.backends.transport import MockRequest, MockTransport
from wattwise.call import ClientGone
from wattwise.config import Config, ModelConfig, StoreConfig
from wattwise.exceptions import UpstreamError
from wattwise.gateway import Gateway
from wattwise.request import ChatBody
from wattwise.scheduling.dispatch import Dispatcher
from wattwise.scheduling.scheduler import ModelPolicy
from wattwise.store.sql import TraceStore

pytestmark = pytest.mark.anyio
MSG = [{"role": "user", "content": "hello there"}]
KEY = "sk-live-secret-0123456789"


class Exploding(Backend):
    """A backend with a bug: an exception nobody mapped."""

    kind = "exploding"

    async def complete(self, request: ChatRequest) -> Completion:
        raise RuntimeError("kaboom")

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        yield StreamEvent(delta="partial")
        raise RuntimeError("kaboom mid-stream")


def make_gateway(store: TraceStore, backends: dict[str, Backend], policies: dict[str, ModelPolicy] | None = None
                 ) -> Gateway:
    config = Config(store=StoreConfig(url=store.url, flush_interval_s=0.01),
                    models={name: ModelConfig(backend="mock") for name in backends})
    dispatcher = Dispatcher.from_replicas({n: [(b, 1.0)] for n, b in backends.items()}, policies=policies or {},
                                          breakers={})
    return Gateway(config=config, backends=backends, store=store, dispatcher=dispatcher)


async def run(gateway: Gateway, body: dict[str, Any]) -> httpx.Response:
    await gateway.start()
    try:
        transport = httpx.ASGITransport(app=create_app(gateway), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://wattwise") as client:
            return await client.post("/v1/chat/completions", json=body)
    finally:
        await gateway.stop()


def row_of(store: TraceStore, response: httpx.Response) -> Any:
    row = store.get(response.headers["x-wattwise-request-id"])
    assert row is not None, "every request that reached a call has a trace row"
    return row


def http_backend(handler: Any, **kw: Any) -> OpenAIHTTPBackend:
    return OpenAIHTTPBackend(name="up", base_url="http://u/v1", upstream_model="m", api_key=KEY,
                             transport=MockTransport(handler), **kw)


@pytest.mark.parametrize("stream", [False, True])
async def test_unexpected_exception_is_a_500_with_openai_body_and_a_row(store: TraceStore, stream: bool) -> None:
    gateway = make_gateway(store, {"x": Exploding(name="x")})
    response = await run(gateway, {"model": "x", "messages": MSG, "stream": stream})
    row = row_of(store, response)
    if stream:
        assert response.status_code == 200  # headers had left; the error is the stream's last event
        assert '"code": "internal_error"' in response.text or '"code":"internal_error"' in response.text
    else:
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
        assert response.headers["x-wattwise-model"] == "x"
    assert row.status == "error" and row.http_status == 500 and "RuntimeError" in row.error
    assert gateway.in_flight == {"interactive": 0, "batch": 0}


@pytest.mark.parametrize(("reply", "stream"), [
    ((200, b'{"choices": [{"message": {"role": "assistant", "content": "x"}}], "usage": {"prompt_tokens": NaN}}'),
     False),
    ((200, b'{"choices": "nope"}'), False),
    ((200, b'data: {"choices": "nope"}\n\n'), True),
    ((200, b'data: [1, 2]\n\n'), True),
    ((200, b'{"id": "x", "choices": []}', {"content-type": "application/json"}), True),
    ((200, b"<html>bad gateway</html>\n"), True),
    ((200, b'data: {"choices": [{"index": 0, "delta": {"content": "cut"}}]}\n\n'), True),
])
async def test_broken_upstream_answers_are_502_with_an_error_row(store: TraceStore, reply: Any, stream: bool) -> None:
    gateway = make_gateway(store, {"up": http_backend(lambda r: reply)})
    response = await run(gateway, {"model": "up", "messages": MSG, "stream": stream})
    if response.status_code == 200:  # a stream cut after its first chunk: the error ends the stream
        assert "upstream_error" in response.text and "[DONE]" not in response.text
    else:
        assert response.status_code == 502, response.text
        assert response.json()["error"]["type"] == "upstream_error"
    row = row_of(store, response)
    assert row.status == "error" and row.http_status == 502


@pytest.mark.parametrize("stream", [False, True])
async def test_crlf_in_upstream_error_with_fallback_cannot_split_headers(store: TraceStore, stream: bool) -> None:
    bad = MockBackend(name="a", fail=UpstreamError("boom\r\nx-injected: 1\r\n\r\nhello"))
    gateway = make_gateway(store, {"a": bad, "b": MockBackend(name="b", reply="fine")},
                           policies={"a": ModelPolicy(fallback=("b",))})
    response = await run(gateway, {"model": "a", "messages": MSG, "stream": stream})
    assert response.status_code == 200 and "x-injected" not in response.headers
    assert "\r" not in response.headers["x-wattwise-route"] and "fallback a→b" in row_of(store, response).route_reason
    assert row_of(store, response).status == "ok"
    assert gateway.in_flight == {"interactive": 0, "batch": 0}


async def test_upstream_error_text_is_redacted_for_client_and_store(store: TraceStore) -> None:
    def echo(request: MockRequest) -> tuple[int, bytes]:
        text = f"bad auth header: {request.headers['authorization']} and api_key={KEY}"
        return 400, json.dumps({"error": {"message": text, "type": "invalid_request_error"}}).encode()

    gateway = make_gateway(store, {"up": http_backend(echo)})
    response = await run(gateway, {"model": "up", "messages": MSG})
    assert response.status_code == 400
    assert KEY not in response.text and "[redacted]" in response.text
    assert KEY not in row_of(store, response).error


async def test_upstream_429_passes_through_typed_with_its_headers(store: TraceStore) -> None:
    def limited(request: MockRequest) -> tuple[int, bytes, dict[str, str]]:
        return 429, b'{"error": {"message": "slow down", "type": "requests"}}', {
            "Retry-After": "30", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"}

    gateway = make_gateway(store, {"up": http_backend(limited)})
    response = await run(gateway, {"model": "up", "messages": MSG})
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert response.headers["retry-after"] == "30" and response.headers["x-ratelimit-remaining-requests"] == "0"


async def test_upstream_lone_surrogate_is_answered_and_recorded(store: TraceStore) -> None:
    body = b'{"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", ' \
           b'"content": "bad \\udc00 text"}}], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}'
    gateway = make_gateway(store, {"up": http_backend(lambda r: (200, body))})
    response = await run(gateway, {"model": "up", "messages": MSG})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "bad \udc00 text"
    assert row_of(store, response).status == "ok"


async def test_call_ending_by_cancellation_or_shutdown_is_named(store: TraceStore) -> None:
    gateway = make_gateway(store, {"m": MockBackend(name="m")})
    await gateway.start()
    body = ChatBody.model_validate({"model": "m", "messages": MSG})
    gateway.call(body, request_id="req_gone", tag=None).close(ClientGone())
    with pytest.raises(asyncio.CancelledError):
        async with gateway.call(body, request_id="req_cancel", tag=None):
            raise asyncio.CancelledError
    gateway.begin_shutdown()
    gateway.call(body, request_id="req_cut", tag=None).close(asyncio.CancelledError())
    await gateway.stop()
    statuses = {r.id: (r.status, r.http_status) for r in store.fetch()}
    assert statuses == {"req_gone": ("client_disconnected", 499), "req_cancel": ("client_disconnected", 499),
                        "req_cut": ("shutdown", 503)}
    assert gateway.in_flight == {"interactive": 0, "batch": 0}


async def test_feedback_waits_for_the_writer_off_the_event_loop(store: TraceStore) -> None:
    gateway = make_gateway(store, {"m": MockBackend(name="m")})
    threads: list[str] = []
    flush = gateway.writer.flush

    def spy(*args: Any, **kw: Any) -> None:
        threads.append(threading.current_thread().name)
        flush(*args, **kw)

    gateway.writer.flush = spy  # type: ignore[method-assign]
    gateway.writer.flush_interval_s = 0.3  # the row is still queued when the feedback arrives
    await gateway.start()
    try:
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://wattwise") as client:
            answered = await client.post("/v1/chat/completions", json={"model": "m", "messages": MSG})
            rid = answered.headers["x-wattwise-request-id"]
            ok = await client.post("/v1/wattwise/feedback", json={"request_id": rid, "score": 0.5})
            assert ok.status_code == 200
    finally:
        await gateway.stop()
    assert threads and threading.main_thread().name not in threads
    assert store.get(rid).score == 0.5
