"""The ASGI app: OpenAI-compatible routes over a :class:`~wattwise.gateway.Gateway`.

Usage::

    app = create_app(gateway)          # serve with uvicorn, or call in-process via httpx.ASGITransport
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from wattwise.api.batch import BATCH_ROUTES
from wattwise.api.body import read_limited
from wattwise.api.errors import error_response
from wattwise.api.middleware import WattwiseHeaders
from wattwise.request import ChatBody, parse_chat_body
from wattwise.backends.base import StreamEvent
from wattwise.batch import BatchRunner
from wattwise.exceptions import InvalidRequest, WattwiseError
from wattwise.gateway import Call, Gateway, Outcome
from wattwise.metrics import CONTENT_TYPE
from wattwise.store.batch import BatchStore

log = logging.getLogger(__name__)


def _num(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.10g}"


def meter_headers(request_id: str, outcome: Outcome | None, *, pending: bool = False) -> dict[str, str]:
    headers = {"x-wattwise-request-id": request_id}
    if outcome is None:
        headers.update({"x-wattwise-model": "none", "x-wattwise-cost-usd": "0", "x-wattwise-energy-j": "0"})
        return headers
    headers["x-wattwise-model"] = outcome.decision.model
    headers["x-wattwise-route"] = outcome.decision.reason.encode("ascii", "replace").decode()[:500]
    if pending:
        headers.update({"x-wattwise-cost-usd": "pending", "x-wattwise-energy-j": "pending"})
    else:
        headers["x-wattwise-cost-usd"] = _num(outcome.cost_usd)
        headers["x-wattwise-energy-j"] = _num(outcome.energy.joules)
        headers["x-wattwise-energy-source"] = outcome.energy.source
    return headers


def meter_body(outcome: Outcome) -> dict[str, Any]:
    return {"model": outcome.decision.model, "route": outcome.decision.reason,
            "policy": outcome.decision.policy, "cost_usd": outcome.cost_usd,
            "cost_source": outcome.cost_source, "energy_j": outcome.energy.joules,
            "energy_source": outcome.energy.source}


def completion_body(call: Call, outcome: Outcome) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": outcome.text, **outcome.extra}
    return {
        "id": "chatcmpl-" + call.request_id.removeprefix("req_"), "object": "chat.completion",
        "created": int(call.ts), "model": outcome.decision.model,
        "choices": [{"index": 0, "message": message, "finish_reason": outcome.finish_reason,
                     "logprobs": None}],
        "usage": outcome.usage.to_openai() if outcome.usage else None,
        "wattwise": meter_body(outcome),
    }


class SSE:
    """Turns backend stream events into OpenAI ``chat.completion.chunk`` server-sent events."""

    def __init__(self, call: Call, *, include_usage: bool) -> None:
        self.call = call
        self.include_usage = include_usage
        self.base = {"id": "chatcmpl-" + call.request_id.removeprefix("req_"),
                     "object": "chat.completion.chunk", "created": int(call.ts)}

    def chunk(self, delta: dict[str, Any] | None, finish: str | None = None,
              usage: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> bytes:
        assert self.call.outcome is not None
        body: dict[str, Any] = {**self.base, "model": self.call.outcome.decision.model}
        body["choices"] = [] if delta is None else [
            {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        if usage is not None or self.include_usage:
            body["usage"] = usage
        if extra:
            body.update(extra)
        return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"

    def event(self, event: StreamEvent) -> list[bytes]:
        out = []
        if event.delta:
            out.append(self.chunk({"content": event.delta}))
        if event.finish_reason is not None:
            out.append(self.chunk({}, finish=event.finish_reason))
            outcome = self.call.outcome
            assert outcome is not None
            if self.include_usage:
                usage = outcome.usage.to_openai() if outcome.usage else None
                out.append(self.chunk(None, usage=usage, extra={"wattwise": meter_body(outcome)}))
        return out


async def sse_body(call: Call, first: StreamEvent | None, events: AsyncIterator[StreamEvent],
                   include_usage: bool) -> AsyncIterator[bytes]:
    sse = SSE(call, include_usage=include_usage)
    completed = False
    try:
        yield sse.chunk({"role": "assistant", "content": ""})
        if first is not None:
            for data in sse.event(first):
                yield data
        async for event in events:
            for data in sse.event(event):
                yield data
        call.finish()
        yield b"data: [DONE]\n\n"
        completed = True
    except WattwiseError as exc:
        call.fail(exc)
        yield b"data: " + json.dumps(exc.to_body()).encode() + b"\n\n"
        completed = True
    finally:
        if not completed:
            # The client went away: stop the upstream work, then say so in the trace row.
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await events.aclose()  # type: ignore[attr-defined]
                call.finish(status="client_disconnected", http_status=499,
                            error="client disconnected mid-stream")


def _tag(request: Request, body: ChatBody) -> str | None:
    return request.headers.get("x-wattwise-tag") or body.wattwise.tag or body.user


async def chat_completions(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    request_id: str = request.scope["state"]["request_id"]
    try:
        raw = await read_limited(request, gateway.config.server.max_body_bytes)
        body = parse_chat_body(raw, max_bytes=gateway.config.server.max_body_bytes)
    except WattwiseError as exc:
        return error_response(exc, headers=meter_headers(request_id, None))
    call = gateway.begin(body, request_id=request_id, tag=_tag(request, body))
    if body.stream:
        return await _stream(call, body)
    try:
        outcome = await call.complete()
    except Exception as exc:
        return _failed(call, exc)
    call.finish()
    return JSONResponse(completion_body(call, outcome), headers=meter_headers(request_id, outcome))


def _failed(call: Call, exc: Exception) -> Response:
    call.fail(exc)
    if not isinstance(exc, WattwiseError):
        log.exception("request %s failed", call.request_id)
        exc = WattwiseError(f"internal error: {type(exc).__name__}")
    return error_response(exc, headers=meter_headers(call.request_id, call.outcome))


async def _stream(call: Call, body: ChatBody) -> Response:
    events = call.stream()
    try:
        first: StreamEvent | None = await events.__anext__()
    except StopAsyncIteration:
        first = None
    except Exception as exc:
        return _failed(call, exc)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(sse_body(call, first, events, include_usage), media_type="text/event-stream",
                             headers={**meter_headers(call.request_id, call.outcome, pending=True),
                                      "cache-control": "no-cache"})


async def list_models(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    created = int(gateway.started_at)
    data = [{"id": name, "object": "model", "created": created, "owned_by": "wattwise",
             "wattwise": backend.describe()} for name, backend in gateway.backends.items()]
    data.append({"id": "auto", "object": "model", "created": created, "owned_by": "wattwise",
                 "wattwise": {"backend": "router"}})
    return JSONResponse({"object": "list", "data": data})


async def healthz(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    return JSONResponse({"status": "ok", "models": len(gateway.backends),
                         "uptime_s": round(time.time() - gateway.started_at, 3)})


async def metrics(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    writer = gateway.writer
    gateway.metrics.trace_backlog.set(writer.submitted - writer.written - writer.failed)
    gateway.metrics.in_flight.set(sum(gateway.in_flight.values()))
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)


async def feedback(request: Request) -> Response:
    """``POST /v1/wattwise/feedback {"request_id", "score"}``: a quality score for a served request."""
    gateway: Gateway = request.app.state.gateway
    try:
        data = json.loads(await read_limited(request, 65536))
        request_id, score = data["request_id"], data["score"]
    except (ValueError, KeyError, TypeError) as exc:
        return error_response(InvalidRequest(f"body needs request_id and score ({exc})", param="score"))
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
        return error_response(InvalidRequest("score must be a number in 0..1", param="score"))
    gateway.writer.flush()
    if not await anyio.to_thread.run_sync(gateway.store.set_score, str(request_id), float(score)):
        return error_response(InvalidRequest(f"no request {request_id!r}", param="request_id", code="not_found"))
    return JSONResponse({"request_id": request_id, "score": score})


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    err = WattwiseError(str(exc.detail))
    err.status = exc.status_code
    err.error_type = "invalid_request_error"
    err.code = "not_found" if exc.status_code == 404 else "method_not_allowed"
    return error_response(err)


def create_app(gateway: Gateway) -> WattwiseHeaders:
    """The gateway's ASGI app; starts and stops ``gateway`` and its batch runner with the server's lifespan."""
    runner = BatchRunner(gateway=gateway, queue=BatchStore(store=gateway.store), render=completion_body)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        await runner.start()
        try:
            yield
        finally:
            await runner.stop()
            await gateway.stop()

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/wattwise/feedback", feedback, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *BATCH_ROUTES,
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.gateway = gateway
    app.state.batch_runner = runner
    return WattwiseHeaders(app)
