"""HTTP transports for the ``openai_http`` backend: a small interface, injected.

:class:`AiohttpTransport` is the default (aiohttp's client costs a fraction of httpx's CPU per
request, which is most of a gateway's overhead); :class:`MockTransport` answers from a handler
function, so no test needs the network. Network failures become :class:`UpstreamTimeout` /
:class:`UpstreamError` here, at the boundary.

Usage::

    def handler(request: MockRequest) -> tuple[int, bytes]:
        return 200, b'{"choices": [...]}'

    backend = OpenAIHTTPBackend(name="m", base_url="http://x/v1", upstream_model="m",
                                transport=MockTransport(handler))
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from wattwise.exceptions import UpstreamError, UpstreamTimeout

Lines = AsyncIterator[bytes]
Headers = dict[str, str]


class Transport(Protocol):
    async def post(self, url: str, body: bytes, *, headers: dict[str, str]) -> tuple[int, bytes, Headers]:
        """POST and read the whole reply: (status, body, headers with lower-case names)."""
        ...

    async def get(self, url: str, *, headers: dict[str, str]) -> int:
        """GET and return the status (the health probe)."""
        ...

    def stream(self, url: str, body: bytes, *,
               headers: dict[str, str]) -> AbstractAsyncContextManager[tuple[int, Lines, Headers]]:
        """POST and read the reply line by line; leaving the context closes the connection."""
        ...

    async def aclose(self) -> None: ...


class AiohttpTransport:
    """Pooled keep-alive connections; the session is made lazily inside the running event loop.

    ``connect_timeout_s`` bounds the TCP connect only: a request that finds all ``max_connections``
    busy queues for a free one (aiohttp's ``connect`` timeout would count that wait, and report a busy
    pool as an upstream timeout).
    """

    def __init__(self, *, timeout_s: float = 120.0, connect_timeout_s: float = 5.0,
                 max_connections: int = 256) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                                  skip_auto_headers=("User-Agent",))
        return self._session

    async def post(self, url: str, body: bytes, *, headers: dict[str, str]) -> tuple[int, bytes, Headers]:
        try:
            async with self._client().post(url, data=body, headers=headers) as response:
                return response.status, await response.read(), _headers(response)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _mapped(exc) from None

    async def get(self, url: str, *, headers: dict[str, str]) -> int:
        try:
            async with self._client().get(url, headers=headers) as response:
                await response.read()
                return response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _mapped(exc) from None

    @asynccontextmanager
    async def stream(self, url: str, body: bytes, *,
                     headers: dict[str, str]) -> AsyncIterator[tuple[int, Lines, Headers]]:
        try:
            async with self._client().post(url, data=body, headers=headers) as response:
                yield response.status, _lines(response), _headers(response)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _mapped(exc) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _headers(response: aiohttp.ClientResponse) -> Headers:
    return {name.lower(): value for name, value in response.headers.items()}


async def _lines(response: aiohttp.ClientResponse) -> Lines:
    async for line in response.content:
        yield line


def _mapped(exc: BaseException) -> UpstreamError | UpstreamTimeout:
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"upstream timed out ({type(exc).__name__})")
    return UpstreamError(f"upstream unreachable ({type(exc).__name__}: {exc})")


@dataclass(frozen=True, kw_only=True)
class MockRequest:
    url: str
    headers: dict[str, str]
    json: dict[str, Any]


# A handler answers (status, body) or (status, body, headers).
Handler = Callable[[MockRequest], tuple[int, bytes] | tuple[int, bytes, Headers]]


class MockTransport:
    """Answers every request from ``handler``; the handler may raise ``TimeoutError`` or
    ``ConnectionError`` to play a slow or unreachable upstream."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def _call(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, Headers]:
        try:
            reply = self.handler(MockRequest(url=url, headers=headers, json=json.loads(body)))
        except (TimeoutError, ConnectionError) as exc:
            raise _mapped(exc) from None
        if len(reply) == 2:
            return reply[0], reply[1], {}
        return reply[0], reply[1], {k.lower(): v for k, v in reply[2].items()}

    async def post(self, url: str, body: bytes, *, headers: dict[str, str]) -> tuple[int, bytes, Headers]:
        await asyncio.sleep(0)
        return self._call(url, body, headers)

    async def get(self, url: str, *, headers: dict[str, str]) -> int:
        await asyncio.sleep(0)
        return self._call(url, b"{}", headers)[0]

    @asynccontextmanager
    async def stream(self, url: str, body: bytes, *,
                     headers: dict[str, str]) -> AsyncIterator[tuple[int, Lines, Headers]]:
        status, content, reply_headers = self._call(url, body, headers)

        async def lines() -> Lines:
            for line in content.splitlines(keepends=True):
                await asyncio.sleep(0)
                yield line

        yield status, lines(), reply_headers

    async def aclose(self) -> None:
        return None
