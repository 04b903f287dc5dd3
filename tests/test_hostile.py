"""Hostile input never gets a 500: a table of bad requests through the ASGI app, each answered with
a 4xx and OpenAI's error body (or served, where it is valid after all); body and header deadlines
and outgoing header sanitising against a real uvicorn server over raw sockets."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wattwise.api.body import RequestTimeout, decode_json, read_json
from wattwise.api.middleware import WattwiseHeaders, header_value, safe_header
from wattwise.exceptions import InvalidRequest, WattwiseError
from wattwise.gateway import Gateway
from wattwise.inprocess import serve_in_thread

pytestmark = pytest.mark.anyio
MSG = [{"role": "user", "content": "hi"}]
JSON = {"content-type": "application/json"}
CHAT = "/v1/chat/completions"


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "cheap", "messages": MSG, **fields}).encode()


def nested(depth: int) -> bytes:
    return b'{"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * depth + \
        b"]" * depth + b"}"


def msgs(*messages: Any) -> bytes:
    return json.dumps({"model": "cheap", "messages": list(messages)}).encode()


BAD_TOOLS: list[Any] = [
    "search", [1], [{}], [{"type": "function"}], [{"type": "retrieval", "function": {"name": "f"}}],
    [{"type": "function", "function": {}}], [{"type": "function", "function": {"name": "has space"}}],
    [{"type": "function", "function": {"name": "x" * 65}}], [{"type": "function", "function": {"name": 5}}],
    [{"type": "function", "function": {"name": "f", "parameters": "object"}}],
    [{"type": "function", "function": {"name": "f", "description": 5}}],
]
TOOL = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]

# (label, method, path, headers, body, expected status or None for "any status below 500")
CASES: list[tuple[str, str, str, dict[str, str], bytes, int | None]] = [
    ("valid control", "POST", CHAT, JSON, chat(), 200),
    ("lone surrogate in content", "POST", CHAT, JSON,
     b'{"model": "cheap", "messages": [{"role": "user", "content": "a\\udc00b"}]}', 400),
    ("lone high surrogate in a passthrough field", "POST", CHAT, JSON,
     b'{"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "metadata": {"k": "\\uD800"}}', 400),
    ("lone surrogate in a key", "POST", CHAT, JSON,
     b'{"model": "cheap", "messages": [{"role": "user", "content": "hi", "\\udfff": 1}]}', 400),
    ("valid surrogate pair (emoji) is fine", "POST", CHAT, JSON,
     b'{"model": "cheap", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}', 200),
    ("JSON nested 1,000 deep", "POST", CHAT, JSON, nested(1000), 400),
    ("JSON nested 100,000 deep", "POST", CHAT, JSON, nested(100_000), 400),
    ("JSON nested 65 deep", "POST", CHAT, JSON, nested(64), 400),
    ("JSON nested 64 deep is allowed", "POST", CHAT, JSON, nested(63), 200),
    ("brackets inside strings do not count", "POST", CHAT, JSON,
     json.dumps({"model": "cheap", "messages": [{"role": "user", "content": "[" * 5000}]}).encode(), 200),
    ("not UTF-8", "POST", CHAT, JSON, b'{"model": "cheap", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
     400),
    ("UTF-16 JSON", "POST", CHAT, JSON, chat().decode().encode("utf-16"), 400),
    ("UTF-8 with a BOM", "POST", CHAT, JSON, b"\xef\xbb\xbf" + chat(), 400),
    ("encoded surrogate bytes", "POST", CHAT, JSON,
     b'{"model": "cheap", "messages": [{"role": "user", "content": "\xed\xb0\x80"}]}', 400),
    ("NaN", "POST", CHAT, JSON, chat().replace(b'"hi"}]', b'"hi"}], "temperature": NaN'), 400),
    ("Infinity", "POST", CHAT, JSON, chat().replace(b'"hi"}]', b'"hi"}], "top_p": Infinity'), 400),
    ("1e400 overflows to inf", "POST", CHAT, JSON, chat().replace(b'"hi"}]', b'"hi"}], "x": 1e400'), 400),
    ("an integer of 5,000 digits", "POST", CHAT, JSON, chat().replace(b'"hi"}]', b'"hi"}], "x": ' + b"9" * 5000),
     400),
    *[(f"tools = {json.dumps(t)[:60]}", "POST", CHAT, JSON, chat(tools=t), 400) for t in BAD_TOOLS],
    ("valid tools", "POST", CHAT, JSON, chat(tools=TOOL, tool_choice="auto"), 200),
    ("tool_choice unknown string", "POST", CHAT, JSON, chat(tools=TOOL, tool_choice="always"), 400),
    ("tool_choice object without function", "POST", CHAT, JSON, chat(tools=TOOL, tool_choice={"type": "function"}),
     400),
    ("tool_choice required without tools", "POST", CHAT, JSON, chat(tool_choice="required"), 400),
    ("tool_choice a number", "POST", CHAT, JSON, chat(tools=TOOL, tool_choice=1), 400),
    ("parallel_tool_calls a string", "POST", CHAT, JSON, chat(tools=TOOL, parallel_tool_calls="yes"), 400),
    *[(f"max_tokens = {v!r}", "POST", CHAT, JSON, chat(max_tokens=v), 400)
      for v in (True, "10", 1e30, 10**30, 2**21, -1, 0, 1.5, [])],
    ("max_completion_tokens a string", "POST", CHAT, JSON, chat(max_completion_tokens="5"), 400),
    ("stream 'yes'", "POST", CHAT, JSON, chat(stream="yes"), 400),
    ("stream 1", "POST", CHAT, JSON, chat(stream=1), 400),
    ("temperature a string", "POST", CHAT, JSON, chat(temperature="0.5"), 400),
    ("temperature 3", "POST", CHAT, JSON, chat(temperature=3), 400),
    ("top_p true", "POST", CHAT, JSON, chat(top_p=True), 400),
    ("n 0", "POST", CHAT, JSON, chat(n=0), 400),
    ("n '2'", "POST", CHAT, JSON, chat(n="2"), 400),
    ("n 10,000", "POST", CHAT, JSON, chat(n=10_000), 400),
    ("seed 2**70", "POST", CHAT, JSON, chat(seed=2**70), 400),
    ("seed a float", "POST", CHAT, JSON, chat(seed=1.5), 400),
    ("stop a number", "POST", CHAT, JSON, chat(stop=5), 400),
    ("stop five sequences", "POST", CHAT, JSON, chat(stop=["a", "b", "c", "d", "e"]), 400),
    ("stop with a number inside", "POST", CHAT, JSON, chat(stop=["a", 1]), 400),
    ("logprobs 'true'", "POST", CHAT, JSON, chat(logprobs="true"), 400),
    ("top_logprobs 50", "POST", CHAT, JSON, chat(top_logprobs=50), 400),
    ("presence_penalty 5", "POST", CHAT, JSON, chat(presence_penalty=5), 400),
    ("logit_bias out of range", "POST", CHAT, JSON, chat(logit_bias={"50256": 1000}), 400),
    ("logit_bias not an object", "POST", CHAT, JSON, chat(logit_bias=[1]), 400),
    ("user a number", "POST", CHAT, JSON, chat(user=5), 400),
    ("response_format a string", "POST", CHAT, JSON, chat(response_format="json"), 400),
    ("response_format unknown type", "POST", CHAT, JSON, chat(response_format={"type": "yaml"}), 400),
    ("response_format json_schema without name", "POST", CHAT, JSON,
     chat(response_format={"type": "json_schema", "json_schema": {"schema": {}}}), 400),
    ("model a number", "POST", CHAT, JSON, json.dumps({"model": 5, "messages": MSG}).encode(), 400),
    ("model empty", "POST", CHAT, JSON, json.dumps({"model": "", "messages": MSG}).encode(), 400),
    ("model null", "POST", CHAT, JSON, json.dumps({"model": None, "messages": MSG}).encode(), 400),
    ("model missing", "POST", CHAT, JSON, json.dumps({"messages": MSG}).encode(), 400),
    ("model 10,000 characters", "POST", CHAT, JSON, json.dumps({"model": "m" * 10_000, "messages": MSG}).encode(),
     400),
    ("model unknown", "POST", CHAT, JSON, json.dumps({"model": "gpt-9", "messages": MSG}).encode(), 404),
    ("model with CR/LF", "POST", CHAT, JSON, json.dumps({"model": "a\r\nb", "messages": MSG}).encode(), 404),
    ("messages missing", "POST", CHAT, JSON, b'{"model": "cheap"}', 400),
    ("messages empty", "POST", CHAT, JSON, msgs(), 400),
    ("messages a string", "POST", CHAT, JSON, b'{"model": "cheap", "messages": "hi"}', 400),
    ("messages an object", "POST", CHAT, JSON, b'{"model": "cheap", "messages": {"role": "user"}}', 400),
    ("message a number", "POST", CHAT, JSON, msgs(1), 400),
    ("message null", "POST", CHAT, JSON, msgs(None), 400),
    ("message empty object", "POST", CHAT, JSON, msgs({}), 400),
    ("role unknown", "POST", CHAT, JSON, msgs({"role": "robot", "content": "x"}), 400),
    ("role null", "POST", CHAT, JSON, msgs({"role": None, "content": "x"}), 400),
    ("role a list", "POST", CHAT, JSON, msgs({"role": ["user"], "content": "x"}), 400),
    ("user message without content", "POST", CHAT, JSON, msgs({"role": "user"}), 400),
    ("user message with null content", "POST", CHAT, JSON, msgs({"role": "user", "content": None}), 400),
    ("content a number", "POST", CHAT, JSON, msgs({"role": "user", "content": 5}), 400),
    ("content an object", "POST", CHAT, JSON, msgs({"role": "user", "content": {"text": "hi"}}), 400),
    ("tool message without tool_call_id", "POST", CHAT, JSON, msgs({"role": "tool", "content": "42"}), 400),
    ("name a number", "POST", CHAT, JSON, msgs({"role": "user", "content": "x", "name": 5}), 400),
    ("tool_calls a string", "POST", CHAT, JSON, msgs({"role": "assistant", "tool_calls": "x"}), 400),
    ("tool_calls arguments an object", "POST", CHAT, JSON,
     msgs({"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                "function": {"name": "f", "arguments": {}}}]}), 400),
    ("content part without type", "POST", CHAT, JSON, msgs({"role": "user", "content": [{"text": "hi"}]}), 400),
    ("content part null", "POST", CHAT, JSON, msgs({"role": "user", "content": [None]}), 400),
    ("content part a string", "POST", CHAT, JSON, msgs({"role": "user", "content": ["hi"]}), 400),
    ("text part without text", "POST", CHAT, JSON, msgs({"role": "user", "content": [{"type": "text"}]}), 400),
    ("text part text a number", "POST", CHAT, JSON,
     msgs({"role": "user", "content": [{"type": "text", "text": 1}]}), 400),
    ("image part url a string not an object", "POST", CHAT, JSON,
     msgs({"role": "user", "content": [{"type": "image_url", "image_url": "http://x"}]}), 400),
    ("image part detail unknown", "POST", CHAT, JSON,
     msgs({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u", "detail": "max"}}]}), 400),
    ("text parts are fine", "POST", CHAT, JSON,
     msgs({"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]}), 200),
    ("stream_options a string", "POST", CHAT, JSON, chat(stream=True, stream_options="yes"), 400),
    ("stream_options include_usage a string", "POST", CHAT, JSON,
     chat(stream=True, stream_options={"include_usage": "yes"}), 400),
    ("stream_options without stream", "POST", CHAT, JSON, chat(stream_options={"include_usage": True}), 400),
    ("wattwise a string", "POST", CHAT, JSON, chat(wattwise="fast"), 400),
    ("wattwise unknown key", "POST", CHAT, JSON, chat(wattwise={"speed": 1}), 400),
    ("wattwise quality_target a string", "POST", CHAT, JSON, chat(wattwise={"quality_target": "high"}), 400),
    ("wattwise quality_target 2", "POST", CHAT, JSON, chat(wattwise={"quality_target": 2}), 400),
    ("wattwise max_cost_usd negative", "POST", CHAT, JSON, chat(wattwise={"max_cost_usd": -1}), 400),
    ("wattwise priority unknown", "POST", CHAT, JSON, chat(wattwise={"priority": "urgent"}), 400),
    ("wattwise tag 500 characters", "POST", CHAT, JSON, chat(wattwise={"tag": "t" * 500}), 400),
    ("NUL bytes in content", "POST", CHAT, JSON, msgs({"role": "user", "content": "a\x00b"}), None),
    ("NUL bytes in the model name", "POST", CHAT, JSON, json.dumps({"model": "ch\x00eap", "messages": MSG}).encode(),
     404),
    ("NUL bytes in the tag header", "POST", CHAT, {**JSON, "x-wattwise-tag": "a\x01b"}, chat(), None),
    ("a 2 MB string", "POST", CHAT, JSON, msgs({"role": "user", "content": "x" * 2_000_000}), 200),
    ("200,000 messages", "POST", CHAT, JSON, msgs(*([{"role": "user", "content": "x"}] * 200_000)), 200),
    ("duplicate keys (last wins)", "POST", CHAT, JSON,
     b'{"model": "nope", "model": "cheap", "messages": [{"role": "user", "content": "hi"}]}', 200),
    ("top-level array", "POST", CHAT, JSON, b"[1, 2]", 400),
    ("top-level string", "POST", CHAT, JSON, b'"hello"', 400),
    ("top-level null", "POST", CHAT, JSON, b"null", 400),
    ("empty body", "POST", CHAT, JSON, b"", 400),
    ("whitespace body", "POST", CHAT, JSON, b"  \n ", 400),
    ("truncated JSON", "POST", CHAT, JSON, chat()[:-5], 400),
    ("trailing garbage", "POST", CHAT, JSON, chat() + b"}", 400),
    ("text/plain body", "POST", CHAT, {"content-type": "text/plain"}, chat(), 415),
    ("form body", "POST", CHAT, {"content-type": "application/x-www-form-urlencoded"}, b"model=cheap&messages=hi",
     415),
    ("multipart body", "POST", CHAT, {"content-type": "multipart/form-data; boundary=b"},
     b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\ncheap\r\n--b--\r\n', 415),
    ("no content type", "POST", CHAT, {}, chat(), 415),
    ("charset latin-1", "POST", CHAT, {"content-type": "application/json; charset=latin-1"}, chat(), 415),
    ("charset utf-8 is fine", "POST", CHAT, {"content-type": "application/json; charset=UTF-8"}, chat(), 200),
    ("an application/*+json type is fine", "POST", CHAT, {"content-type": "application/vnd.api+json"}, chat(), 200),
    ("declared length over the limit", "POST", CHAT, JSON, msgs({"role": "user", "content": "x" * 11_000_000}), 413),
    ("GET on chat", "GET", CHAT, {}, b"", 405),
    ("PUT on models", "PUT", "/v1/models", JSON, b"{}", 405),
    ("DELETE on healthz", "DELETE", "/healthz", {}, b"", 405),
    ("PATCH on batches", "PATCH", "/v1/batches", JSON, b"{}", 405),
    ("unknown path", "GET", "/v1/nope", {}, b"", 404),
    ("under chat", "POST", CHAT + "/x", JSON, chat(), 404),
    ("path with an encoded NUL", "GET", "/v1/files/%00", {}, b"", 404),
    ("path of 8,000 characters", "GET", "/v1/" + "a" * 8000, {}, b"", 404),
    ("model id with odd bytes", "GET", "/v1/models/%ff%fe%0d%0a", {}, b"", 404),
    ("feedback text/plain", "POST", "/v1/wattwise/feedback", {"content-type": "text/plain"}, b"x", 415),
    ("feedback array", "POST", "/v1/wattwise/feedback", JSON, b"[1]", 400),
    ("feedback score a string", "POST", "/v1/wattwise/feedback", JSON, b'{"request_id": "r", "score": "1"}', 400),
    ("feedback request_id a number", "POST", "/v1/wattwise/feedback", JSON, b'{"request_id": 5, "score": 1}', 400),
    ("feedback nested 1,000 deep", "POST", "/v1/wattwise/feedback", JSON, b"[" * 1000 + b"]" * 1000, 400),
    ("feedback lone surrogate", "POST", "/v1/wattwise/feedback", JSON, b'{"request_id": "\\udc00", "score": 1}', 400),
    ("feedback NUL in request_id", "POST", "/v1/wattwise/feedback", JSON,
     b'{"request_id": "a\\u0000b", "score": 1}', None),
    ("batch not JSON", "POST", "/v1/batches", JSON, b"{", 400),
    ("batch text/plain", "POST", "/v1/batches", {"content-type": "text/plain"}, b"{}", 415),
    ("batch nested 1,000 deep", "POST", "/v1/batches", JSON, b"[" * 1000 + b"]" * 1000, 400),
    ("batch lone surrogate", "POST", "/v1/batches", JSON,
     b'{"input_file_id": "\\udc00", "endpoint": "/v1/chat/completions", "completion_window": "24h"}', 400),
    ("batch input_file_id a list", "POST", "/v1/batches", JSON,
     b'{"input_file_id": [], "endpoint": "/v1/chat/completions", "completion_window": "24h"}', 400),
    ("batch endpoint a dict", "POST", "/v1/batches", JSON,
     b'{"input_file_id": "f", "endpoint": {}, "completion_window": "24h"}', 400),
    ("batch metadata a list", "POST", "/v1/batches", JSON,
     b'{"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": []}', 400),
    ("batches limit not a number", "GET", "/v1/batches?limit=abc", {}, b"", 400),
    ("batches limit huge", "GET", "/v1/batches?limit=" + "9" * 5000, {}, b"", None),
    ("files limit not a number", "GET", "/v1/files?limit=abc", {}, b"", 400),
    ("file upload as JSON", "POST", "/v1/files", JSON, b'{"purpose": "batch"}', 400),
    ("file upload without boundary", "POST", "/v1/files", {"content-type": "multipart/form-data"}, b"x", 400),
    ("unknown file", "GET", "/v1/files/file-nope", {}, b"", 404),
    ("unknown file content", "GET", "/v1/files/file-nope/content", {}, b"", 404),
    ("unknown batch", "GET", "/v1/batches/batch_nope", {}, b"", 404),
    ("cancel unknown batch", "POST", "/v1/batches/batch_nope/cancel", {}, b"", 404),
    *[(f"{path} {label}", "POST", path, headers, body, status)
      for path in ("/v1/embeddings", "/v1/completions", "/v1/responses")
      for label, headers, body, status in (
          ("not JSON", JSON, b"{", 400), ("text/plain", {"content-type": "text/plain"}, b"{}", 415),
          ("nested 1,000 deep", JSON, b"[" * 1000 + b"]" * 1000, 400),
          ("lone surrogate", JSON, b'{"model": "cheap", "input": "\\udc00", "prompt": "\\udc00"}', 400),
          ("top-level array", JSON, b"[]", 400), ("model a number", JSON, b'{"model": 1, "input": "x"}', 400),
          ("unknown model", JSON, b'{"model": "nope", "input": "x", "prompt": "x"}', 404),
          ("stream a string", JSON, b'{"model": "cheap", "input": "x", "prompt": "x", "stream": "yes"}', 400))],
]


def is_openai_error(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return (isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
            and isinstance(error["message"], str) and bool(error["message"]) and isinstance(error["type"], str))


async def test_hostile_requests_get_4xx_with_openai_error_bodies(client: httpx.AsyncClient, gateway: Gateway) -> None:
    failures = []
    for label, method, path, headers, body, expected in CASES:
        try:
            response = await client.request(method, path, content=body, headers=headers)
        except Exception as exc:  # an exception the app let escape is a 500 on a real server
            failures.append(f"{label}: raised {type(exc).__name__}: {exc}")
            continue
        status = response.status_code
        if status >= 500 or (expected is not None and status != expected):
            failures.append(f"{label}: {status} (expected {expected or '< 500'}) {response.text[:200]}")
        elif status >= 400 and not is_openai_error(response.json()):
            failures.append(f"{label}: {status} without OpenAI's error body: {response.text[:200]}")
    assert not failures, f"{len(failures)} of {len(CASES)} hostile requests mishandled:\n" + "\n".join(failures)


def test_the_table_is_as_large_as_the_docs_say() -> None:
    doc = Path(__file__).parents[1] / "docs" / "reliability.md"
    assert f"{len(CASES)} hostile requests, 0 × 5xx" in doc.read_text(encoding="utf-8")


async def test_surrogate_is_refused_before_the_backend_is_charged(client: httpx.AsyncClient,
                                                                 gateway: Gateway) -> None:
    body = b'{"model": "cheap", "messages": [{"role": "user", "content": "a\\udc00"}]}'
    response = await client.post(CHAT, content=body, headers=JSON)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content"
    assert response.json()["error"]["code"] == "invalid_encoding"
    gateway.writer.flush()
    assert gateway.store.fetch() == []  # no call began: nothing sent upstream, nothing charged


async def test_strict_types_name_the_field(client: httpx.AsyncClient) -> None:
    for fields, param in (({"max_tokens": "10"}, "max_tokens"), ({"stream": "yes"}, "stream"),
                          ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
                          ({"messages": [{"role": "user", "content": [{"type": "text"}]}]},
                           "messages[0].content[0].text")):
        response = await client.post(CHAT, content=chat(**fields), headers=JSON)
        assert (response.status_code, response.json()["error"]["param"]) == (400, param)


async def test_n_above_one_is_not_refused_at_parse() -> None:
    from wattwise.request import parse_chat_body

    assert parse_chat_body(chat(n=3), max_bytes=10_000).n == 3


def test_decode_json_is_cheap_on_ordinary_bodies() -> None:
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 1000}] * 1000}).encode()
    started = time.perf_counter()
    for _ in range(20):
        decode_json(raw)
    assert (time.perf_counter() - started) / 20 < 0.05
    with pytest.raises(InvalidRequest, match="64 levels"):
        decode_json(b"[" * 65 + b"]" * 65)
    assert decode_json(b"[" * 64 + b"]" * 64) is not None


# -- deadlines and headers against a real server ---------------------------------------------------

async def _echo(request: Request) -> Response:
    try:
        data = await read_json(request, 1_000_000, timeout_s=1.0)
    except WattwiseError as exc:
        return JSONResponse(exc.to_body(), status_code=exc.status)
    return JSONResponse(data)


async def _bad_header(request: Request) -> Response:
    # What an upstream's error text can put in a header: CR/LF, control and non-latin-1 characters.
    return Response("ok", headers={"x-wattwise-route": "fallback: upstream said \"no\"\r\nset-cookie: x=1",
                                   "x-upstream": "caf\u00e9 \x07bell", "x-long": "v" * 5000})


def tiny_app() -> WattwiseHeaders:
    return WattwiseHeaders(Starlette(routes=[Route("/echo", _echo, methods=["POST"]),
                                             Route("/bad-header", _bad_header, methods=["GET"])]))


def _exchange(base: str, payload: bytes, *, wait_s: float = 8.0) -> tuple[bytes, float]:
    """Send ``payload`` and read until the server closes; the bytes and how long it took."""
    host, port = base.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        if payload:
            sock.sendall(payload)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            pass
    return data, time.monotonic() - started


def test_partial_headers_are_answered_408_and_closed() -> None:
    with serve_in_thread(tiny_app(), header_timeout_s=1.0) as base:
        data, took = _exchange(base, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Le")
        assert data.startswith(b"HTTP/1.1 408") and took < 4
        assert is_openai_error(json.loads(data.partition(b"\r\n\r\n")[2]))
        data, took = _exchange(base, b"")  # connects and sends nothing
        assert data.startswith(b"HTTP/1.1 408") and took < 4


def test_a_kept_alive_connection_gets_the_header_deadline_for_its_next_request() -> None:
    with serve_in_thread(tiny_app(), header_timeout_s=1.0) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=8) as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 2\r\n\r\n{}")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            sock.sendall(b"GET /echo HTTP/1.1\r\nHo")  # the next request stalls mid-headers
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            assert data.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 4


def test_a_short_body_is_answered_408_within_the_read_deadline() -> None:
    with serve_in_thread(tiny_app(), header_timeout_s=1.0) as base:
        head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        data, took = _exchange(base, head + b'{"a": 1')
        assert data.startswith(b"HTTP/1.1 408") and took < 4
        body = json.loads(data.partition(b"\r\n\r\n")[2])
        assert is_openai_error(body) and body["error"]["code"] == "request_timeout"


def test_a_slow_but_complete_request_is_served() -> None:
    with serve_in_thread(tiny_app(), header_timeout_s=2.0) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            for part in (b"POST /echo HTTP/1.1\r\nHost: x\r\n", b"Content-Type: application/json\r\n",
                         b"Content-Length: 8\r\nConnection: close\r\n\r\n", b'{"a": 1}'):
                sock.sendall(part)
                time.sleep(0.3)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")


async def test_read_json_deadline_on_a_stalled_body() -> None:
    async def receive() -> dict[str, Any]:
        if not sent:
            sent.append(1)
            return {"type": "http.request", "body": b'{"a":', "more_body": True}
        await anyio_sleep(60)
        return {"type": "http.disconnect"}

    from anyio import sleep as anyio_sleep

    sent: list[int] = []
    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", b"application/json")]}
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        await read_json(Request(scope, receive), 1000, timeout_s=0.2)
    assert time.monotonic() - started < 2


def test_unsafe_response_headers_are_sanitised_not_fatal() -> None:
    with serve_in_thread(tiny_app()) as base:
        response = httpx.get(base + "/bad-header")
    assert response.status_code == 200 and response.text == "ok"
    assert response.headers["x-wattwise-route"] == "fallback: upstream said \"no\"??set-cookie: x=1"
    assert response.headers["x-upstream"] == "caf? ?bell"
    assert len(response.headers["x-long"]) == 1024
    assert "set-cookie" not in response.headers


async def test_middleware_sanitises_in_process() -> None:
    transport = httpx.ASGITransport(app=tiny_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://w") as c:
        response = await c.get("/bad-header")
    raw = dict(response.headers.raw)
    assert raw[b"x-wattwise-route"].isascii() and b"\r" not in raw[b"x-wattwise-route"]
    assert safe_header(b" ok ") == b"ok" and safe_header(b"plain") == b"plain"
    assert header_value("\u2603 snow\n") == "? snow?"
