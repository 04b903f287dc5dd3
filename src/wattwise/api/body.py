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

import json
import math
import re
from typing import Any

import anyio
from starlette.requests import Request

from wattwise.exceptions import InvalidRequest, PayloadTooLarge, RequestError

MAX_DEPTH = 64
READ_TIMEOUT_S = 30.0

_SURROGATE = re.compile("[\ud800-\udfff]")


class RequestTimeout(RequestError):
    """408: the body did not arrive in time (a client sent less than its Content-Length, or stalled)."""

    status = 408
    code = "request_timeout"


class UnsupportedMediaType(RequestError):
    """415: a JSON endpoint got a body that is not declared as JSON."""

    status = 415
    code = "unsupported_media_type"


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
        raise InvalidRequest(f"the request body must be a JSON object, not {_json_type(data)}", code="invalid_json")
    return data


def decode_json(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Strict UTF-8 JSON with finite numbers, at most ``max_depth`` levels, and no lone surrogates;
    any breach is :class:`InvalidRequest` (400) naming the problem (and the field, for a surrogate).

    >>> decode_json(b'{"a": [1, 2.5]}')
    {'a': [1, 2.5]}
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid UTF-8 (byte {exc.start})",
                             code="invalid_encoding") from None
    if not text.strip():
        raise InvalidRequest("the request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise _too_deep(max_depth) from None
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if _deeper_than(raw, data, max_depth):
        raise _too_deep(max_depth)
    # A lone surrogate can only come from a \uD800-\uDFFF escape (strict UTF-8 rejects encoded ones),
    # so the walk runs only when the raw bytes hold such an escape.
    if b"\\ud" in raw or b"\\uD" in raw:
        where = surrogate_path(data)
        if where is not None:
            raise InvalidRequest(f"invalid '{where}': a lone UTF-16 surrogate (\\ud800-\\udfff) is not valid "
                                 "Unicode text", param=where, code="invalid_encoding")
    return data


def _too_deep(max_depth: int) -> InvalidRequest:
    return InvalidRequest(f"the request body nests JSON more than {max_depth} levels deep", code="invalid_json")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _deeper_than(raw: bytes, data: Any, max_depth: int) -> bool:
    """Whether ``data`` nests more than ``max_depth`` arrays/objects: skipped when ``raw`` holds fewer
    brackets than that, else one list comprehension per level over the containers alone."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False
    level = [data]
    for _ in range(max_depth):
        level = [item for node in level for item in (node.values() if isinstance(node, dict) else node)
                 if isinstance(item, dict | list)]
        if not level:
            return False
    return True


def surrogate_path(value: Any, path: str = "") -> str | None:
    """The path (``messages[0].content``) of the first string or key holding a lone surrogate, or None.

    >>> surrogate_path({"messages": [{"content": "ok"}, {"content": "bad \\udc00"}]})
    'messages[1].content'
    """
    if isinstance(value, str):
        return (path or "body") if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else key
            if _SURROGATE.search(key):
                return here.encode("utf-8", "backslashreplace").decode()
            found = surrogate_path(item, here)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = surrogate_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None
