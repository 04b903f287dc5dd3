"""The response cache's admin API (master key only).

``POST /v1/wattwise/cache/purge {"key_id"?, "team"?, "tag"?, "model"?}``: drop every entry matching
all the given fields (at least one), e.g. after a prompt or an upstream changed; the answer says how
many went, and the audit log records who purged what. ``GET /v1/wattwise/cache``: the cache's
configuration and size.

Usage::

    routes = [..., *CACHE_ROUTES]
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wattwise.access.redis_state import StateUnavailable
from wattwise.access.routes import admin_access, admin_spec
from wattwise.cache.stores import PURGE_FIELDS, CacheUnavailable, state_json
from wattwise.exceptions import InvalidRequest
from wattwise.gateway import Gateway


async def purge(request: Request) -> Response:
    access = admin_access(request)
    spec = await admin_spec(request)
    gateway: Gateway = request.app.state.gateway
    unknown = sorted(set(spec) - set(PURGE_FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown purge field '{unknown[0]}'; use {', '.join(PURGE_FIELDS)}", param=unknown[0])
    filters = {name: spec[name] for name in PURGE_FIELDS if spec.get(name) is not None}
    if not filters:
        raise InvalidRequest(f"name at least one of {', '.join(PURGE_FIELDS)}", code="missing_required_parameter")
    for name, value in filters.items():
        if not isinstance(value, str) or not value:
            raise InvalidRequest(f"'{name}' must be a non-empty string", param=name)
    if gateway.cache is None:
        return JSONResponse({"purged": 0, "filters": filters})
    try:
        purged = await gateway.cache.purge(**filters)
    except CacheUnavailable as exc:
        raise StateUnavailable(f"the shared cache cannot be reached: {exc}") from None
    await anyio.to_thread.run_sync(lambda: access.keys.note(
        actor="api", action="cache_purge", detail={**filters, "purged": purged}, now=time.time()))
    return JSONResponse({"purged": purged, "filters": filters})


async def show(request: Request) -> Response:
    admin_access(request)
    gateway: Gateway = request.app.state.gateway
    if gateway.cache is None:
        return JSONResponse({"enabled": False})
    cache = gateway.cache
    config = cache.config.model_dump()
    config["url"] = redacted_url(config["url"])
    return JSONResponse({"enabled": True, "config": config, **state_json(cache.store),
                         "semantic": cache.semantic is not None})


def redacted_url(url: str) -> str:
    """``url`` without its password (``redis://:secret@host`` → ``redis://:***@host``)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


CACHE_ROUTES = [
    Route("/v1/wattwise/cache/purge", purge, methods=["POST"]),
    Route("/v1/wattwise/cache", show, methods=["GET"]),
]
