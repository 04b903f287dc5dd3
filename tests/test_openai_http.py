"""The openai_http backend against httpx.MockTransport: usage details, streaming, error mapping."""

from __future__ import annotations

import json

import httpx
import pytest

from wattwise.backends.base import ChatRequest
from wattwise.backends.openai_http import OpenAIHTTPBackend
from wattwise.exceptions import UpstreamError, UpstreamRejected, UpstreamTimeout

pytestmark = pytest.mark.anyio
REQ = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=7, extra={"reasoning_effort": "low"})
USAGE = {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
         "prompt_tokens_details": {"cached_tokens": 64},
         "completion_tokens_details": {"reasoning_tokens": 30}}


def backend(handler) -> OpenAIHTTPBackend:  # type: ignore[no-untyped-def]
    return OpenAIHTTPBackend(name="up", base_url="http://upstream/v1", upstream_model="real-model",
                             api_key="sk-test", transport=httpx.MockTransport(handler))


async def test_complete_reads_cached_and_reasoning_tokens() -> None:
    seen: dict = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(json.loads(request.content), auth=request.headers["authorization"], url=str(request.url))
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": "yo"},
                                                      "finish_reason": "length"}], "usage": USAGE})

    done = await backend(handler).complete(REQ)
    assert done.text == "yo" and done.finish_reason == "length"
    assert (done.usage.input_tokens, done.usage.cached_input_tokens) == (100, 64)
    assert (done.usage.output_tokens, done.usage.reasoning_tokens) == (40, 30)
    assert seen["model"] == "real-model" and seen["max_tokens"] == 7 and seen["reasoning_effort"] == "low"
    assert seen["auth"] == "Bearer sk-test" and seen["url"] == "http://upstream/v1/chat/completions"


async def test_stream_parses_sse_and_final_usage() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        events = [{"choices": [{"delta": {"role": "assistant"}, "finish_reason": None}]},
                  {"choices": [{"delta": {"content": "a"}, "finish_reason": None}]},
                  {"choices": [{"delta": {"content": "b"}, "finish_reason": "stop"}]},
                  {"choices": [], "usage": USAGE}]
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})

    events = [e async for e in backend(handler).stream(REQ)]
    assert "".join(e.delta for e in events) == "ab"
    assert events[-1].finish_reason == "stop"
    assert events[-1].usage is not None and events[-1].usage.cached_input_tokens == 64


@pytest.mark.parametrize(("status", "kind", "mapped"), [(500, UpstreamError, 502), (503, UpstreamError, 502),
                                                         (429, UpstreamRejected, 429),
                                                         (400, UpstreamRejected, 400)])
async def test_upstream_status_is_mapped(status: int, kind: type, mapped: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"message": "nope", "param": "messages"}})

    with pytest.raises(kind) as info:
        await backend(handler).complete(REQ)
    assert info.value.status == mapped and "nope" in info.value.message
    with pytest.raises(kind):
        [e async for e in backend(handler).stream(REQ)]


async def test_timeout_and_connection_errors_are_mapped() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(UpstreamTimeout):
        await backend(slow).complete(REQ)
    with pytest.raises(UpstreamError) as info:
        await backend(down).complete(REQ)
    assert info.value.status == 502


async def test_malformed_upstream_body_is_502() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"unexpected": True})

    with pytest.raises(UpstreamError):
        await backend(handler).complete(REQ)
