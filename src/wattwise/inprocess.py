"""Running the gateway's ASGI app under uvicorn: the server options ``wattwise serve`` and the
in-process server share, and the in-process server itself (a background thread, a free loopback port).

uvicorn has no deadline for a request's headers: a client that connects and sends nothing, or half a
request line, holds a connection (and a file descriptor) forever, and ``timeout_keep_alive`` only
runs between requests. :func:`header_deadline_protocol` adds one; the body's deadline is
:func:`wattwise.api.body.read_limited`'s, which answers 408 with OpenAI's error body.

Usage::

    with serve_in_thread(create_app(gateway)) as base_url:
        httpx.get(base_url + "/healthz")

    uvicorn.run(app, http=header_deadline_protocol(10.0), ...)
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.auto import AutoHTTPProtocol

HEADER_TIMEOUT_S = 10.0
_TIMEOUT_BODY = json.dumps({"error": {"message": "the request headers did not arrive in time",
                                      "type": "invalid_request_error", "param": None,
                                      "code": "request_timeout"}}).encode()
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY)


def header_deadline_protocol(timeout_s: float = HEADER_TIMEOUT_S, base: Any = AutoHTTPProtocol) -> Any:
    """uvicorn's HTTP protocol (httptools or h11), answering 408 and closing a connection whose
    request headers are not complete ``timeout_s`` after it opened or after the next request began."""

    class HeaderDeadline(base):
        _deadline: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:
                self._disarm()  # headers complete; the body has read_limited's deadline
            elif (cycle is None or cycle.response_complete) and self._deadline is None:
                self._arm()  # the start of a next request on a kept-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._deadline = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self.transport.write(TIMEOUT_RESPONSE)
                self.transport.close()

    return HeaderDeadline


@contextmanager
def serve_in_thread(app: ASGIApp, *, host: str = "127.0.0.1", startup_timeout_s: float = 30.0,
                    header_timeout_s: float = HEADER_TIMEOUT_S) -> Iterator[str]:
    """Yield the base URL (``http://host:port``) while the server runs; stop it gracefully after."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                            timeout_keep_alive=60, http=header_deadline_protocol(header_timeout_s)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="wattwise-server")
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the in-process gateway did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


class GatewayServer(uvicorn.Server):
    """uvicorn's server, telling the gateway the moment a shutdown signal arrives: streams it cuts
    after the grace period are then recorded as ``shutdown``, not as ``client_disconnected``.

    Usage::

        GatewayServer(uvicorn.Config(create_app(gateway)), on_exit=gateway.begin_shutdown).run()
    """

    def __init__(self, config: uvicorn.Config, *, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)
