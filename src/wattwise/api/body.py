"""Reading a request body before any of it is trusted: JSON content type, size limit, read deadline,
strict UTF-8, finite numbers, a nesting-depth limit and no lone UTF-16 surrogates.

Every JSON endpoint reads its body with :func:`read_json`, so hostile input gets the same 4xx (with
OpenAI's error body) everywhere instead of a 500 from deep inside a handler.

Usage::

    data = await read_json(request, 10_000_000)        # a dict, or a RequestError (400/408/413/415)
    raw = await read_limited(request, 100_000_000, setting="batch.max_file_bytes")   # bytes, for uploads
    data = decode_json(raw)                              # the same checks on bytes from elsewhere
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.requests import Request

from wattwise.exceptions import InvalidRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from wattwise.jsontext import MAX_DEPTH, decode_json, json_type

__all__ = ["MAX_DEPTH", "RequestTimeout", "UnsupportedMediaType", "decode_json", "read_json", "read_limited",
           "require_json"]

READ_TIMEOUT_S = 30.0

async def read_limited(request: Request, max_bytes: int, *, setting: str = "server.max_body_bytes",
                       timeout_s: float = READ_TIMEOUT_S) -> bytes:
    """The body, or :class:`PayloadTooLarge` (413) naming the limit's setting once it is exceeded, or
    :class:`RequestTimeout` (408) when the whole body has not arrived within ``timeout_s``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {max_bytes} ({setting})")
    chunks, size = [], 0
    try:
        with anyio.fail_after(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes ({setting})")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s "
                             f"({size} bytes received)") from None
    return b"".join(chunks)


def require_json(content_type: str | None) -> None:
    """Raise :class:`UnsupportedMediaType` unless ``content_type`` is ``application/json`` (or an
    ``application/*+json`` type), with no charset or a UTF-8 one."""
    media, _, params = (content_type or "").partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise UnsupportedMediaType(f"Content-Type must be application/json (got {content_type or 'none'!r})",
                                   param="content-type")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(f"the JSON body must be UTF-8 (got charset {value.strip()!r})",
                                       param="content-type")


async def read_json(request: Request, max_bytes: int, *, setting: str = "server.max_body_bytes",
                    timeout_s: float = READ_TIMEOUT_S, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The body as a JSON object, after :func:`require_json`, :func:`read_limited` and :func:`decode_json`."""
    require_json(request.headers.get("content-type"))
    data = decode_json(await read_limited(request, max_bytes, setting=setting, timeout_s=timeout_s),
                       max_depth=max_depth)
    if not isinstance(data, dict):
        raise InvalidRequest(f"the request body must be a JSON object, not {json_type(data)}", code="invalid_json")
    return data
