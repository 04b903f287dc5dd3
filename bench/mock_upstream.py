"""A minimal, fast OpenAI-compatible upstream for the gateway benchmarks.

It answers every ``POST`` with one fixed ``chat.completion`` (with ``usage``) and every ``GET`` with a
one-model list, over HTTP/1.1 keep-alive, parsed by hand on a raw asyncio protocol so that it is never
the bottleneck of a benchmark. A body asking for ``"stream": true`` gets the same answer as
server-sent events (with a usage chunk when ``stream_options.include_usage`` is asked for).

Run it on its own::

    python bench/mock_upstream.py --port 9100
    curl -s http://127.0.0.1:9100/v1/chat/completions -d '{"model": "m", "messages": []}'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
from typing import cast

MODEL = "mock-model"
CONTENT = "This is a fixed reply from the mock upstream."
USAGE = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
CREATED = 1_700_000_000
MAX_HEADER_BYTES = 65_536
CONTENT_LENGTH_RE = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
CLOSE_RE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)
CHUNKED_RE = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)
STREAM_RE = re.compile(rb'"stream"\s*:\s*true')


def _json_response(status: str, payload: dict) -> bytes:
    """Return a complete HTTP/1.1 response carrying ``payload`` as JSON."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def completion_payload() -> dict:
    """Return the fixed non-streaming ``chat.completion`` body."""
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": CONTENT},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }


def _chunk(delta: dict, finish: str | None, usage: dict | None = None) -> dict:
    """Return one ``chat.completion.chunk`` event body."""
    choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    event = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": choices,
    }
    if usage:
        event["usage"] = usage
    return event


def _stream_response(with_usage: bool) -> bytes:
    """Return a complete chunked HTTP/1.1 response of server-sent events."""
    events = [
        _chunk({"role": "assistant", "content": ""}, None),
        *(_chunk({"content": word + " "}, None) for word in CONTENT.split()),
        _chunk({}, "stop"),
    ]
    if with_usage:
        events.append(_chunk({}, None, USAGE))
    datas = [f"data: {json.dumps(e, separators=(',', ':'))}\n\n".encode() for e in events]
    datas.append(b"data: [DONE]\n\n")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(d), d) for d in datas)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    return head + chunks + b"0\r\n\r\n"


class Responses:
    """The pre-built responses the server sends, built once at start-up.

    Example::

        responses = Responses()
        assert responses.completion.startswith(b"HTTP/1.1 200 OK")
    """

    def __init__(self) -> None:
        """Build every response once so that serving is a single ``write``."""
        self.completion = _json_response("200 OK", completion_payload())
        self.stream = _stream_response(with_usage=False)
        self.stream_usage = _stream_response(with_usage=True)
        self.models = _json_response(
            "200 OK", {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "mock"}]}
        )
        self.unsupported = _json_response(
            "411 Length Required", {"error": {"message": "send a content-length", "type": "mock"}}
        )

    def for_request(self, head: bytes, body: bytes) -> bytes:
        """Return the response for one parsed request."""
        if head.startswith(b"GET"):
            return self.models
        if STREAM_RE.search(body):
            return self.stream_usage if b"include_usage" in body else self.stream
        return self.completion


class MockProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, parsed with no library.

    Example::

        server = await loop.create_server(lambda: MockProtocol(Responses()), "127.0.0.1", 9100)
    """

    def __init__(self, responses: Responses) -> None:
        """Keep the shared responses and start with an empty buffer."""
        self.responses = responses
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport to write replies on."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        """Answer every complete request in the buffer (pipelining included)."""
        self.buffer += data
        while self.transport is not None and self._serve_one():
            pass

    def _serve_one(self) -> bool:
        """Answer the first buffered request if it is complete; say whether one was."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEADER_BYTES:
                self._close()
            return False
        head = self.buffer[:end]
        if CHUNKED_RE.search(head):
            return self._reply(self.responses.unsupported, close=True)
        match = CONTENT_LENGTH_RE.search(head)
        size = int(match.group(1)) if match else 0
        if len(self.buffer) < end + 4 + size:
            return False
        body = self.buffer[end + 4 : end + 4 + size]
        self.buffer = self.buffer[end + 4 + size :]
        return self._reply(self.responses.for_request(head, body), close=bool(CLOSE_RE.search(head)))

    def _reply(self, response: bytes, *, close: bool) -> bool:
        """Write one response, closing the connection when the client asked to."""
        assert self.transport is not None
        self.transport.write(response)
        if close:
            self._close()
        return not close

    def _close(self) -> None:
        """Close the connection and stop parsing."""
        if self.transport is not None:
            self.transport.close()
        self.transport = None


async def serve(host: str, port: int) -> None:
    """Serve the mock upstream on ``host:port`` until cancelled."""
    loop = asyncio.get_running_loop()
    responses = Responses()
    server = await loop.create_server(lambda: MockProtocol(responses), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def run(host: str, port: int) -> None:
    """Run :func:`serve` on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop  # optional: the mock is faster on it
    except ImportError:
        asyncio.run(serve(host, port))
    else:
        uvloop.run(serve(host, port))


def main() -> None:
    """Parse ``--host`` and ``--port`` and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        run(args.host, args.port)


if __name__ == "__main__":
    main()
