"""A tiny pure-ASGI middleware: every request but the open paths presents a key, or gets a 401.

It resolves ``Authorization: Bearer <key>`` (or ``x-api-key``) to a
:class:`~wattwise.access.principal.Principal` and puts it in ``scope["state"]["principal"]``; the
routes then govern the request (:meth:`wattwise.access.control.Access.admit`). The headers that
admission sets (``x-ratelimit-*``, budget policy) are added to the response here. A missing, wrong,
expired or revoked key gets the same 401 (``invalid_api_key``): nothing tells a guess that a key
exists.

Usage::

    app = AccessGate(starlette_app, access=access)
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wattwise.access.auth import token_of
from wattwise.access.control import Access
from wattwise.exceptions import AuthenticationError

_UNAUTHORIZED = json.dumps(AuthenticationError(
    "Incorrect API key provided. Send a valid key as 'Authorization: Bearer <key>'.").to_body()).encode()


class AccessGate:
    def __init__(self, app: ASGIApp, *, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        auth = self.access.auth
        auth.ensure_loaded()
        state: dict[str, Any] = scope.setdefault("state", {})
        if auth.open_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = token_of(scope["headers"])
        principal = await auth.resolve(token) if (token or auth.required) else None
        if principal is None and auth.required:
            await _refuse(send)
            return
        if principal is not None or "principal" not in state:
            state["principal"] = principal
        added: dict[str, str] = state.setdefault("access_headers", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and added:
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((k.encode(), v.encode()) for k, v in added.items()
                                        if k.encode() not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _refuse(send: Send) -> None:
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(_UNAUTHORIZED)).encode()),
                            (b"www-authenticate", b'Bearer realm="wattwise"')]})
    await send({"type": "http.response.body", "body": _UNAUTHORIZED})
