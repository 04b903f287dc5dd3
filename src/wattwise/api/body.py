"""Reading a request body with a size limit, before any of it is parsed.

Usage::

    raw = await read_limited(request, 10_000_000, setting="server.max_body_bytes")
"""

from __future__ import annotations

from starlette.requests import Request

from wattwise.exceptions import PayloadTooLarge


async def read_limited(request: Request, max_bytes: int, *, setting: str = "server.max_body_bytes") -> bytes:
    """The body, or :class:`PayloadTooLarge` (413) naming the limit's setting once it is exceeded."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {max_bytes} ({setting})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes ({setting})")
        chunks.append(chunk)
    return b"".join(chunks)
