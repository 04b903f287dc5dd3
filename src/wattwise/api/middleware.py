"""Tiny pure-ASGI middleware: a request id for every request, the four wattwise headers on every
response (endpoints that meter something set real values; the rest get neutral ones), and every
outgoing header made safe to send (a CR/LF, control or non-ASCII byte in a value, e.g. an upstream
error's text, would otherwise make the server drop the response).

Usage::

    app = WattwiseHeaders(starlette_app)
    headers["x-wattwise-route"] = header_value(reason)     # for a str header built from untrusted text
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_HEADER_VALUE = 1024
_UNSAFE_VALUE = re.compile(rb"[^\x20-\x7e]")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9a-zA-Z-]+")
DEFAULTS = ((b"x-wattwise-model", b"none"), (b"x-wattwise-cost-usd", b"0"), (b"x-wattwise-energy-j", b"0"))


def id_factory() -> Callable[[], str]:
    """Request ids: a random per-process prefix and a counter (unique across replicas without a
    system call per request, unlike ``uuid4``)."""
    prefix = "req_" + secrets.token_hex(8)
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):012x}"


def safe_header(value: bytes) -> bytes:
    r"""Printable ASCII, no surrounding blanks, at most :data:`MAX_HEADER_VALUE` bytes; anything
    else becomes ``?``. The usual value passes the first test untouched.

    >>> safe_header(b"upstream said: no\r\nset-cookie: x")
    b'upstream said: no??set-cookie: x'
    """
    if len(value) <= MAX_HEADER_VALUE and not _UNSAFE_VALUE.search(value) and value == value.strip(b" "):
        return value
    return _UNSAFE_VALUE.sub(b"?", value[:MAX_HEADER_VALUE]).strip(b" ")


def header_value(text: str) -> str:
    """``text`` as a header value Starlette can encode and any HTTP server will send."""
    return safe_header(text.encode("ascii", "replace")).decode("ascii")


def safe_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Each value through :func:`safe_header`; a header whose name is not an HTTP token is dropped."""
    return [(name, safe_header(value)) for name, value in headers if _TOKEN.fullmatch(name)]


class WattwiseHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.new_request_id = id_factory()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self.new_request_id()
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        rid = request_id.encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = safe_headers(list(message.get("headers", [])))
                present = {name.lower() for name, _ in headers}
                if b"x-wattwise-request-id" not in present:
                    headers.append((b"x-wattwise-request-id", rid))
                headers.extend(h for h in DEFAULTS if h[0] not in present)
                if message["status"] == 408 and b"connection" not in present:
                    headers.append((b"connection", b"close"))  # the rest of the body never came: hang up
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
