"""The openai_http backend: usage details, streaming, error mapping (MockTransport), and the real
aiohttp transport against loopback upstreams (slow, refusing)."""

from __future__ import annotations

import json
import socket

import pytest
from tests.upstream import UpstreamLog, upstream_app

from wattwise.backends.base import ChatRequest
from wattwise.backends.openai_http import OpenAIHTTPBackend
from wattwise.backends.transport import MockRequest, MockTransport
from wattwise.exceptions import UpstreamError, UpstreamRejected, UpstreamTimeout
from wattwise.inprocess import serve_in_thread

pytestmark = pytest.mark.anyio
REQ = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=7,
                  extra={"reasoning_effort": "low"})
USAGE = {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
         "prompt_tokens_details": {"cached_tokens": 64},
         "completion_tokens_details": {"reasoning_tokens": 30}}


def backend(handler) -> OpenAIHTTPBackend:  # type: ignore[no-untyped-def]
    return OpenAIHTTPBackend(name="up", base_url="http://upstream/v1/", upstream_model="real-model",
                             api_key="sk-test", transport=MockTransport(handler))


def reply(status: int, obj: object) -> tuple[int, bytes]:
    return status, json.dumps(obj).encode()


async def test_complete_reads_cached_and_reasoning_tokens() -> None:
    seen: list[MockRequest] = []

    def handler(request: MockRequest) -> tuple[int, bytes]:
        seen.append(request)
        return reply(200, {"choices": [{"message": {"role": "assistant", "content": "yo"},
                                        "finish_reason": "length"}], "usage": USAGE})

    done = await backend(handler).complete(REQ)
    assert done.text == "yo" and done.finish_reason == "length"
    assert (done.usage.input_tokens, done.usage.cached_input_tokens) == (100, 64)
    assert (done.usage.output_tokens, done.usage.reasoning_tokens) == (40, 30)
    [request] = seen
    assert request.json["model"] == "real-model" and request.json["max_tokens"] == 7
    assert request.json["reasoning_effort"] == "low"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.url == "http://upstream/v1/chat/completions"


async def test_stream_parses_sse_and_final_usage() -> None:
    def handler(request: MockRequest) -> tuple[int, bytes]:
        assert request.json["stream"] is True and request.json["stream_options"] == {"include_usage": True}
        return 200, ("".join(f"data: {json.dumps(e)}\n\n" for e in events_sent) + "data: [DONE]\n\n").encode()

    events_sent = [{"choices": [{"delta": {"role": "assistant"}, "finish_reason": None}]},
                   {"choices": [{"delta": {"content": "a"}, "finish_reason": None}]},
                   {"choices": [{"delta": {"content": "b"}, "finish_reason": "stop"}]},
                   {"choices": [], "usage": USAGE}]
    events = [e async for e in backend(handler).stream(REQ)]
    assert "".join(e.delta for e in events) == "ab"
    assert [e.finish_reason for e in events] == [None, None, "stop", None]
    assert events[-1].usage is not None and events[-1].usage.cached_input_tokens == 64
    assert [e.raw for e in events] == events_sent  # each chunk carried whole, for pass-through


@pytest.mark.parametrize(("status", "kind", "mapped"), [(500, UpstreamError, 502), (503, UpstreamError, 502),
                                                         (429, UpstreamRejected, 429),
                                                         (400, UpstreamRejected, 400)])
async def test_upstream_status_is_mapped(status: int, kind: type, mapped: int) -> None:
    def handler(request: MockRequest) -> tuple[int, bytes]:
        return reply(status, {"error": {"message": "nope", "param": "messages"}})

    with pytest.raises(kind) as info:
        await backend(handler).complete(REQ)
    assert info.value.status == mapped and "nope" in info.value.message
    assert info.value.message.startswith("model 'up': ")
    with pytest.raises(kind):
        [e async for e in backend(handler).stream(REQ)]


@pytest.mark.parametrize(("failure", "kind", "status"), [(TimeoutError(), UpstreamTimeout, 504),
                                                         (ConnectionRefusedError(), UpstreamError, 502)])
async def test_network_failures_are_mapped(failure: Exception, kind: type, status: int) -> None:
    def handler(request: MockRequest) -> tuple[int, bytes]:
        raise failure

    with pytest.raises(kind) as info:
        await backend(handler).complete(REQ)
    assert info.value.status == status and info.value.message.startswith("model 'up': ")


async def test_malformed_upstream_body_is_502() -> None:
    with pytest.raises(UpstreamError):
        await backend(lambda request: reply(200, {"unexpected": True})).complete(REQ)
    with pytest.raises(UpstreamError):
        await backend(lambda request: (200, b"not json")).complete(REQ)


async def test_aiohttp_transport_timeout_and_refused() -> None:
    with serve_in_thread(upstream_app(UpstreamLog(), reply_delay_s=2.0)) as slow:
        late = OpenAIHTTPBackend(name="slow", base_url=slow + "/v1", upstream_model="m", timeout_s=0.3)
        with pytest.raises(UpstreamTimeout):
            await late.complete(REQ)
        await late.aclose()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        down = OpenAIHTTPBackend(name="down", base_url=f"http://127.0.0.1:{port}/v1", upstream_model="m")
        with pytest.raises(UpstreamError) as info:
            await down.complete(REQ)
        with pytest.raises(UpstreamError):
            [e async for e in down.stream(REQ)]
        await down.aclose()
    assert info.value.status == 502 and "unreachable" in info.value.message
