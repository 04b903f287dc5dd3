"""Tiny pure-ASGI middleware: a request id for every request, and the four wattwise headers on
every response (endpoints that meter something set real values; the rest get neutral ones).

Usage::

    app = WattwiseHeaders(starlette_app)
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULTS = ((b"x-wattwise-model", b"none"), (b"x-wattwise-cost-usd", b"0"), (b"x-wattwise-energy-j", b"0"))


def new_request_id() -> str:
    """A random request id, for work that starts outside an HTTP request (batch lines)."""
    return "req_" + secrets.token_hex(16)


def id_factory() -> Callable[[], str]:
    """Request ids: a random per-process prefix and a counter (unique across replicas without a
    system call per request, unlike ``uuid4``)."""
    prefix = "req_" + secrets.token_hex(8)
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):012x}"


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
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                if b"x-wattwise-request-id" not in present:
                    headers.append((b"x-wattwise-request-id", rid))
                headers.extend(h for h in DEFAULTS if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
