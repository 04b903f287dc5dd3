"""Strict JSON text: what a request body (or a batch line) must be before anything reads it.

Strict UTF-8, finite numbers, at most ``MAX_DEPTH`` levels of nesting, and no lone UTF-16 surrogates;
any breach is :class:`~wattwise.exceptions.InvalidRequest` (400) naming the problem. Pure functions,
apart from HTTP: the request model and the batch runner use them as the API layer does.

Usage::

    data = decode_json(raw_bytes)
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from wattwise.exceptions import InvalidRequest

MAX_DEPTH = 64

_SURROGATE = re.compile("[\ud800-\udfff]")


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


def json_type(value: Any) -> str:
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
