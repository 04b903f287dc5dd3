"""``/v1/embeddings``, ``/v1/completions`` and ``/v1/responses``, proxied to pass-through backends.

The body goes upstream as the client sent it (``model`` replaced by the upstream's name); the
answer comes back unchanged but for ``model``. Each request is a :class:`~wattwise.call.Call` like a
chat request: dispatched with the model's replicas, retries and fallbacks (a stream is retried only
before its first line), metered from the upstream's usage, and recorded. ``model`` must name a
configured model (``auto`` routes chat only), and a backend that is not OpenAI-compatible HTTP answers
400 naming ``model``.

Usage::

    routes = [..., *PROXY_ROUTES]
    client.embeddings.create(model="fast", input="hello")        # openai client
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from wattwise.access.routes import govern
from wattwise.api.body import read_json
from wattwise.api.render import JSONBody, meter_body, meter_headers
from wattwise.backends.base import Backend, ChatRequest, Completion, Forwarded
from wattwise.call import Call, ClientGone, Decision, Outcome
from wattwise.exceptions import InvalidRequest, ModelNotFound
from wattwise.gateway import Gateway
from wattwise.metering.usage import Usage
from wattwise.request import ChatBody

# Endpoint → the body field whose text is the prompt (for the trace row and its hash).
ENDPOINTS = {"/embeddings": "input", "/completions": "prompt", "/responses": "input"}


def _prompt_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_prompt_text(v.get("content") if isinstance(v, dict) else v) for v in value)
    return "" if value is None else json.dumps(value)


def _parse(data: dict[str, Any], gateway: Gateway, path: str) -> ChatBody:
    model, stream = data.get("model"), data.get("stream", False)
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string", param="model",
                             code="missing_required_parameter" if model is None else "invalid_value")
    if model not in gateway.backends:
        raise ModelNotFound(f"The model '{model}' does not exist; see GET /v1/models (auto routes chat "
                            "completions only)", param="model")
    if not isinstance(stream, bool) or (stream and path == "/embeddings"):
        raise InvalidRequest("'stream' must be a boolean (embeddings do not stream)", param="stream")
    if ENDPOINTS[path] not in data:
        raise InvalidRequest(f"'{ENDPOINTS[path]}' is required", param=ENDPOINTS[path],
                             code="missing_required_parameter")
    return ChatBody.model_construct(model=model, stream=stream, messages=[])


def _call(gateway: Gateway, request: Request, body: ChatBody, data: dict[str, Any], path: str) -> Call:
    text = _prompt_text(data.get(ENDPOINTS[path]))
    chat_request = ChatRequest(messages=[{"role": "user", "content": text}])
    call = gateway.call(body, request_id=request.scope["state"]["request_id"],
                        tag=request.headers.get("x-wattwise-tag"), request=chat_request)
    call.outcome = Outcome(decision=Decision(model=body.model, policy="direct", reason=f"requested (/v1{path})"))
    request.scope["state"]["call"] = call
    return call


def _metered(call: Call, done: Completion, started: float) -> Outcome:
    outcome = call.outcome
    assert outcome is not None
    call.meter.add(outcome, usage=done.usage, recorded_cost=None, energy=None, busy_s=time.perf_counter() - started)
    outcome.completion = done
    outcome.text = None
    return outcome


async def forward(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    path = request.url.path.removeprefix("/v1")
    data = await read_json(request, gateway.config.server.max_body_bytes)
    body = _parse(data, gateway, path)
    call = _call(gateway, request, body, data, path)
    await govern(request, call)
    if body.stream:
        return await _stream(call, path, data)
    async with call:
        hit = await _from_cache(call, gateway, request, path, data)
        if hit is not None:
            return hit
        started = time.perf_counter()

        async def once(backend: Backend) -> Completion:
            return await backend.forward(path, data)

        done = await call.dispatcher.run(body.model, call.request, once, priority=call.priority)
        outcome = _metered(call, done, started)
        answer = {**(done.raw or {}), "wattwise": meter_body(outcome)}
        if "model" in answer:
            answer["model"] = body.model
        return JSONBody(answer, headers={**meter_headers(call.request_id, outcome), **done.headers})


async def _from_cache(call: Call, gateway: Gateway, request: Request, path: str, data: dict[str, Any]
                      ) -> Response | None:
    """An ``/embeddings`` answer from the response cache when ``[cache] embeddings`` keeps them (else
    the call's plan says whether its answer is to be kept)."""
    if gateway.cache is None:
        return None
    plan = gateway.cache.plan_payload(path, data, principal=call.principal,
                                      cache_control=request.headers.get("cache-control"))
    call.cache_plan = plan
    found = await gateway.cache.lookup(plan)
    assert call.outcome is not None
    call.outcome.cache = plan.status if plan.key is not None else None
    if found is None:
        return None
    entry = found.entry
    call.outcome = outcome = Outcome(
        decision=Decision(model=entry.model, policy="cache", reason=found.reason), usage=Usage(), cost_usd=0.0,
        cost_source="cache_hit", energy=found.energy, cache="hit", cached=found, text=None)
    answer = {**entry.body, "wattwise": meter_body(outcome)}
    if entry.upstream_model is not None:  # the upstream's answer named a model: name ours, as when live
        answer["model"] = entry.model
    return JSONBody(answer, headers=meter_headers(call.request_id, outcome))


async def _stream(call: Call, path: str, data: dict[str, Any]) -> Response:
    lines = call.dispatcher.stream_with(call.body.model, call.request,
                                        lambda backend: backend.forward_stream(path, data), priority=call.priority)
    first = await call.first(lines)
    return StreamingResponse(_relay(call, first, lines), media_type="text/event-stream",
                             headers={**meter_headers(call.request_id, call.outcome, pending=True),
                                      "cache-control": "no-cache"})


async def _relay(call: Call, first: Forwarded | None, lines: AsyncIterator[Forwarded]) -> AsyncIterator[bytes]:
    """The upstream's lines as they come; usage read on the way, the row written at the end."""
    started, usage = time.perf_counter(), None
    try:
        if first is not None:
            usage = first.usage or usage
            yield first.line
        async for item in lines:
            usage = item.usage or usage
            yield item.line
        _metered(call, Completion(text=None, usage=usage or Usage()), started)
        call.close()
    except Exception as exc:
        error = call.close(exc)
        if error is None:
            raise
        yield b"event: error\ndata: " + json.dumps(error.to_body()).encode() + b"\n\n"
    finally:
        if not call.closed:
            with anyio.CancelScope(shield=True):
                await lines.aclose()  # type: ignore[attr-defined]
                call.close(ClientGone())


PROXY_ROUTES = [Route("/v1" + path, forward, methods=["POST"]) for path in ENDPOINTS]
