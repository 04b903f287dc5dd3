"""The admin API (master key only) and the one helper routes call to govern a request.

``POST /v1/wattwise/keys`` (create; the answer holds the key, shown once), ``GET /v1/wattwise/keys``
(list), ``GET /v1/wattwise/keys/{id}`` (show, with spend), ``PATCH /v1/wattwise/keys/{id}``
(update), ``DELETE /v1/wattwise/keys/{id}`` (revoke), ``GET /v1/wattwise/audit`` (admin actions).
A request without the master key gets 401 when it has no valid key, 403 when it has an ordinary one.

Usage::

    routes = [..., *ADMIN_ROUTES]
    call = gateway.call(body, ...)
    await govern(request, call)          # in a route: refusals close the call and are raised
"""

from __future__ import annotations

import time
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wattwise.access import admin
from wattwise.access.control import Access
from wattwise.access.principal import Principal
from wattwise.api.body import read_json
from wattwise.call import Call
from wattwise.exceptions import AuthenticationError, InvalidRequest, NotFound, PermissionDenied

ADMIN_BODY_LIMIT = 65536


async def govern(request: Request, call: Call) -> None:
    """Admit ``call`` for the request's principal; a refusal ends the call (its row says why) and is raised."""
    access: Access | None = getattr(request.app.state, "access", None)
    if access is None:
        return
    state = request.scope["state"]
    try:
        headers = await access.admit(call, state.get("principal"))
    except BaseException as exc:
        error = call.close(exc)
        if error is None or error is exc:
            raise
        raise error from exc
    state.setdefault("access_headers", {}).update(headers)


def admin_access(request: Request) -> Access:
    """The access control of a request made with the master key (401 without a key, 403 with another)."""
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    if principal is None:
        raise AuthenticationError("The admin API needs the master key as 'Authorization: Bearer <key>'.")
    if not principal.admin:
        raise PermissionDenied("Only the master key may administer keys.")
    access: Access = request.app.state.access
    return access


def _teams(access: Access) -> dict[str, Any]:
    return admin.team_budgets(access.config.budgets.teams)


async def admin_spec(request: Request) -> dict[str, Any]:
    data = await read_json(request, ADMIN_BODY_LIMIT, setting="admin body limit")
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    return data


async def create(request: Request) -> Response:
    access = admin_access(request)
    spec = await admin_spec(request)
    secret = access.auth.secret
    if secret is None:
        raise InvalidRequest("no hashing secret is configured ([auth] hash_secret_env)")
    record, key = await anyio.to_thread.run_sync(
        lambda: admin.create_key(access.keys, spec, secret=secret, actor="api", now=time.time()))
    await access.auth.refresh()
    return JSONResponse({**record.public(), "key": key}, status_code=201)


async def list_keys(request: Request) -> Response:
    access = admin_access(request)
    records = await anyio.to_thread.run_sync(access.keys.keys)
    return JSONResponse({"object": "list", "data": [r.public() for r in records]})


async def show(request: Request) -> Response:
    access = admin_access(request)
    key_id = request.path_params["key_id"]

    def read() -> dict[str, Any]:
        record = access.keys.get_key(key_id)
        if record is None:
            raise NotFound(f"no key {key_id!r}", param="id")
        access.ledger.flush()  # spend rows still on their way to the store
        return admin.show_key(access.keys, record, teams=_teams(access), now=time.time())

    return JSONResponse(await anyio.to_thread.run_sync(read))


async def update(request: Request) -> Response:
    access = admin_access(request)
    spec = await admin_spec(request)
    record = await anyio.to_thread.run_sync(lambda: admin.update_key(
        access.keys, request.path_params["key_id"], spec, actor="api", now=time.time()))
    await access.auth.refresh()
    return JSONResponse(record.public())


async def revoke(request: Request) -> Response:
    access = admin_access(request)
    record = await anyio.to_thread.run_sync(lambda: admin.revoke_key(
        access.keys, request.path_params["key_id"], actor="api", now=time.time()))
    await access.auth.refresh()
    return JSONResponse(record.public())


async def audit(request: Request) -> Response:
    access = admin_access(request)
    rows = await anyio.to_thread.run_sync(lambda: access.keys.audit_log(limit=1000))
    return JSONResponse({"object": "list", "data": rows})


ADMIN_ROUTES = [
    Route("/v1/wattwise/keys", create, methods=["POST"]),
    Route("/v1/wattwise/keys", list_keys, methods=["GET"]),
    Route("/v1/wattwise/keys/{key_id}", show, methods=["GET"]),
    Route("/v1/wattwise/keys/{key_id}", update, methods=["PATCH"]),
    Route("/v1/wattwise/keys/{key_id}", revoke, methods=["DELETE"]),
    Route("/v1/wattwise/audit", audit, methods=["GET"]),
]
