"""The ASGI app: OpenAI-compatible routes over a :class:`~wattwise.gateway.Gateway`.

Usage::

    app = create_app(gateway)          # serve with uvicorn, or call in-process via httpx.ASGITransport
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from wattwise.access.control import Access
from wattwise.access.gate import AccessGate
from wattwise.access.principal import Principal
from wattwise.access.routes import ADMIN_ROUTES, govern
from wattwise.api.batch import BATCH_ROUTES
from wattwise.api.body import read_json
from wattwise.api.cache import CACHE_ROUTES
from wattwise.api.files import owner_of
from wattwise.api.middleware import OriginCheck, WattwiseHeaders
from wattwise.api.openapi import openapi_json
from wattwise.api.proxy import PROXY_ROUTES
from wattwise.api.render import JSONBody, dumps, header_value, meter_body, meter_headers
from wattwise.backends.base import StreamEvent
from wattwise.batch import BatchRunner
from wattwise.call import Call, ClientGone, Outcome
from wattwise.exceptions import InternalError, InvalidRequest, ModelNotFound, NotFound, WattwiseError
from wattwise.gateway import Gateway
from wattwise.metrics import CONTENT_TYPE
from wattwise.request import ChatBody, chat_body
from wattwise.store.batch import BatchStore

log = logging.getLogger(__name__)


def completion_body(call: Call, outcome: Outcome) -> dict[str, Any]:
    """The answer as OpenAI's ``chat.completion``: a pass-through backend's body unchanged but for
    ``model`` (the configured name wattwise chose) and the ``wattwise`` extras."""
    done = outcome.completion
    if done is not None and done.raw is not None:
        return {**done.raw, "model": outcome.decision.model, "wattwise": meter_body(outcome)}
    message: dict[str, Any] = {"role": "assistant", "content": outcome.text, **outcome.extra}
    return {
        "id": "chatcmpl-" + call.request_id.removeprefix("req_"), "object": "chat.completion",
        "created": int(call.ts), "model": outcome.decision.model,
        "choices": [{"index": 0, "message": message, "finish_reason": outcome.finish_reason,
                     "logprobs": done.logprobs if done else None}],
        "usage": outcome.usage.to_openai() if outcome.usage else None,
        "wattwise": meter_body(outcome),
    }


class SSE:
    """Turns stream events into OpenAI ``chat.completion.chunk`` server-sent events.

    A pass-through event's chunk is sent as the upstream sent it, but for ``model``; its usage
    chunk is held until the answer is metered, then sent with the ``wattwise`` extras (only when the
    client asked for usage: wattwise always asks upstream, since usage is what it meters).
    """

    def __init__(self, call: Call, *, include_usage: bool) -> None:
        self.call = call
        self.include_usage = include_usage
        self.base = {"id": "chatcmpl-" + call.request_id.removeprefix("req_"),
                     "object": "chat.completion.chunk", "created": int(call.ts)}
        cached = call.outcome.cached if call.outcome is not None else None
        if cached is not None:  # a replayed hit: the answer's own top-level fields, as its live chunks had
            self.base.update({k: cached.entry.body[k] for k in ("system_fingerprint", "service_tier")
                              if cached.entry.body.get(k) is not None})
        self.held_usage: dict[str, Any] | None = None

    @property
    def model(self) -> str:
        assert self.call.outcome is not None
        return self.call.outcome.decision.model

    def chunk(self, delta: dict[str, Any] | None, finish: str | None = None,
              usage: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
              logprobs: dict[str, Any] | None = None) -> bytes:
        body: dict[str, Any] = {**self.base, "model": self.model}
        body["choices"] = [] if delta is None else [
            {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]
        if usage is not None or self.include_usage:
            body["usage"] = usage
        if extra:
            body.update(extra)
        return b"data: " + dumps(body) + b"\n\n"

    def opener(self, first: StreamEvent | None) -> list[bytes]:
        if first is not None and first.raw is not None:
            return []  # the upstream sends its own first chunk
        return [self.chunk({"role": "assistant", "content": ""})]

    def event(self, event: StreamEvent) -> list[bytes]:
        if event.raw is not None:
            return self._raw(event.raw)
        out = []
        delta: dict[str, Any] = {"content": event.delta} if event.delta else {}
        if event.delta_extra:
            delta.update(event.delta_extra)
        if delta or event.logprobs:
            out.append(self.chunk(delta, logprobs=event.logprobs))
        if event.finish_reason is not None:
            out.append(self.chunk({}, finish=event.finish_reason))
        return out

    def _raw(self, chunk: dict[str, Any]) -> list[bytes]:
        if chunk.get("usage") and not chunk.get("choices"):
            self.held_usage = chunk
            return []
        chunk = {**chunk, "model": self.model}
        if not self.include_usage:
            chunk.pop("usage", None)
        return [b"data: " + dumps(chunk) + b"\n\n"]

    def tail(self) -> list[bytes]:
        """After the answer is metered: the usage chunk, if the client asked for it."""
        outcome = self.call.outcome
        if not self.include_usage or outcome is None:
            return []
        extras = {"wattwise": meter_body(outcome)}
        if self.held_usage is not None:
            return [b"data: " + dumps({**self.held_usage, "model": self.model, **extras}) + b"\n\n"]
        usage = outcome.usage.to_openai() if outcome.usage else None
        if outcome.cached is not None:  # a cache hit reports the served answer's own usage, as unstreamed
            usage = outcome.cached.entry.body.get("usage")
        return [self.chunk(None, usage=usage, extra=extras)]


async def sse_body(call: Call, sse: SSE, first: StreamEvent | None,
                   events: AsyncIterator[StreamEvent]) -> AsyncIterator[bytes]:
    """The stream's bytes; the call is closed (its row written) before the final bytes leave."""
    try:
        for data in sse.opener(first):
            yield data
        if first is not None:
            for data in sse.event(first):
                yield data
        async for event in events:
            for data in sse.event(event):
                yield data
        tail = sse.tail()
        call.close()
        for data in tail:
            yield data
        yield b"data: [DONE]\n\n"
    except Exception as exc:
        error = call.close(exc)
        if error is None:
            raise
        yield b"data: " + dumps(error.to_body()) + b"\n\n"
    finally:
        if not call.closed:
            # The client went away (or the server is stopping): stop the upstream work, then say so.
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await events.aclose()  # type: ignore[attr-defined]
                call.close(ClientGone())


def with_header_tag(body: ChatBody, request: Request) -> ChatBody:
    """An ``x-wattwise-tag`` header is the request's ``wattwise.tag`` unless the body names one, so the
    router's per-application adaptation keys the request as its labels are keyed."""
    header = request.headers.get("x-wattwise-tag")
    if not header or body.wattwise.tag:
        return body
    options = body.wattwise.model_copy(update={"tag": header[:200]})
    return body.model_copy(update={"wattwise": options})


def _tag(request: Request, body: ChatBody) -> str | None:
    return request.headers.get("x-wattwise-tag") or body.wattwise.tag or body.user


async def chat_completions(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    request_id: str = request.scope["state"]["request_id"]
    body = with_header_tag(chat_body(await read_json(request, gateway.config.server.max_body_bytes)), request)
    call = gateway.call(body, request_id=request_id, tag=_tag(request, body))
    call.cache_control = request.headers.get("cache-control")
    request.scope["state"]["call"] = call
    await govern(request, call)
    if body.stream:
        return await _stream(call, call.body)
    async with call:
        outcome = await call.complete()
        headers = {**meter_headers(request_id, outcome), **_passed(outcome)}
        # Rendered inside the call: a body that cannot be sent is the call's failure, not a row saying ok.
        return JSONBody(completion_body(call, outcome), headers=headers)


def _passed(outcome: Outcome) -> dict[str, str]:
    return outcome.completion.headers if outcome.completion is not None else {}


async def _stream(call: Call, body: ChatBody) -> Response:
    events = call.stream()
    first = await call.first(events)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    sse = SSE(call, include_usage=include_usage)
    return StreamingResponse(sse_body(call, sse, first, events), media_type="text/event-stream",
                             headers={**meter_headers(call.request_id, call.outcome, pending=True),
                                      "cache-control": "no-cache"})


def _model_object(gateway: Gateway, name: str) -> dict[str, Any]:
    created = int(gateway.started_at)
    if name == "auto":
        return {"id": "auto", "object": "model", "created": created, "owned_by": "wattwise",
                "wattwise": {"backend": "router"}}
    return {"id": name, "object": "model", "created": created, "owned_by": "wattwise",
            "wattwise": gateway.backends[name].describe()}


def _may_use(request: Request, name: str) -> bool:
    """Whether the request's key may use the model (a key's ``models`` list; no key: any)."""
    principal = request.scope.get("state", {}).get("principal")
    return not isinstance(principal, Principal) or principal.settings.allows(name)


async def list_models(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    data = [_model_object(gateway, name) for name in [*gateway.backends, "auto"] if _may_use(request, name)]
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    name = request.path_params["model"]
    if (name != "auto" and name not in gateway.backends) or not _may_use(request, name):
        raise ModelNotFound(f"The model '{name}' does not exist; see GET /v1/models", param="model")
    return JSONResponse(_model_object(gateway, name))


async def healthz(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    return JSONResponse({"status": "ok", "models": len(gateway.backends),
                         "uptime_s": round(time.time() - gateway.started_at, 3)})


async def metrics(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    writer = gateway.writer
    gateway.metrics.trace_backlog.set(writer.submitted - writer.written - writer.failed)
    gateway.metrics.in_flight.set(sum(gateway.in_flight.values()))
    for service in gateway.services:
        for name, value in getattr(service, "stats", dict)().items():
            gateway.metrics.flywheel.labels(name).set(value)
    version = getattr(gateway.router, "version", None)
    if isinstance(version, str):
        gateway.metrics.router_version.clear()
        gateway.metrics.router_version.labels(version).set(1)
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)


async def feedback(request: Request) -> Response:
    """``POST /v1/wattwise/feedback {"request_id", "score"}``: a quality score for a served request."""
    gateway: Gateway = request.app.state.gateway
    data = await read_json(request, 65536, setting="feedback body limit")
    if "request_id" not in data or "score" not in data:
        missing = "request_id" if "request_id" not in data else "score"
        raise InvalidRequest(f"'{missing}' is required", param=missing, code="missing_required_parameter")
    request_id, score = data["request_id"], data["score"]
    if not isinstance(request_id, str) or not request_id or "\x00" in request_id or len(request_id) > 200:
        raise InvalidRequest("request_id must be a request id string", param="request_id")
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
        raise InvalidRequest("score must be a number in 0..1", param="score")
    store, writer, owner = gateway.store, gateway.writer, owner_of(request)

    def set_score() -> bool:
        # The row may still be on its way to the store: wait for the writer, off the event loop.
        if owner is not None:  # with keys, only the key that made the request may score it
            row = store.get(request_id)
            if row is None:
                writer.flush()
                row = store.get(request_id)
            if row is None or row.key_id != owner:
                return False
        if store.set_score(request_id, float(score)):
            return True
        writer.flush()
        return store.set_score(request_id, float(score))

    if not await anyio.to_thread.run_sync(set_score):
        raise NotFound(f"no request {request_id!r}", param="request_id")
    return JSONResponse({"request_id": request_id, "score": score})


async def wattwise_error(request: Request, exc: Exception) -> Response:
    """The one renderer of every :class:`WattwiseError`: OpenAI's body, the status, the upstream's
    headers it carries, and the meter headers of the call it ended (if one had begun)."""
    assert isinstance(exc, WattwiseError)
    state = request.scope.get("state", {})
    call: Call | None = state.get("call")
    headers = meter_headers(state.get("request_id", ""), call.outcome if call else None)
    headers.update({k: header_value(v) for k, v in getattr(exc, "headers", {}).items()})
    return JSONBody(exc.to_body(), status_code=exc.status, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    err = WattwiseError(str(exc.detail))
    err.status = exc.status_code
    err.error_type = "invalid_request_error"
    err.code = "not_found" if exc.status_code == 404 else "method_not_allowed"
    return await wattwise_error(request, err)


async def internal_error(request: Request, exc: Exception) -> Response:
    """A bug outside any call: still OpenAI's body (Starlette logs the traceback)."""
    return await wattwise_error(request, InternalError(f"internal error ({type(exc).__name__})"))


def create_app(gateway: Gateway, *, access: Access | None = None) -> WattwiseHeaders:
    """The gateway's ASGI app; starts and stops ``gateway``, its batch runner and its access control
    (by default built from the gateway's config, the master key from the environment) with the
    server's lifespan."""
    access = access or Access(config=gateway.config, store=gateway.store, meter=gateway.meter, environ=os.environ)
    queue = BatchStore(store=gateway.store, keep_content=gateway.config.store.store_content)
    runner = BatchRunner(gateway=gateway, queue=queue, render=completion_body, govern=access.govern_batch_line)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        await access.start()
        await runner.start()
        try:
            yield
        finally:
            gateway.begin_shutdown()
            await runner.stop()
            await access.stop()
            await gateway.stop()

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        *PROXY_ROUTES,
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/wattwise/feedback", feedback, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *BATCH_ROUTES,
        *ADMIN_ROUTES,
        *CACHE_ROUTES,
    ]
    handlers = {HTTPException: http_error, WattwiseError: wattwise_error, Exception: internal_error}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.gateway = gateway
    app.state.batch_runner = runner
    app.state.access = access
    return WattwiseHeaders(OriginCheck(AccessGate(app, access=access), allowed=gateway.config.server.allowed_origins))
