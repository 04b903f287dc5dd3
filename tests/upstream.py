"""A tiny OpenAI-compatible upstream for end-to-end tests, recording what it saw."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
         "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 0}}


@dataclass
class UpstreamLog:
    bodies: list[dict[str, Any]] = field(default_factory=list)
    streams_started: int = 0
    streams_cancelled: int = 0
    streams_finished: int = 0


def upstream_app(log: UpstreamLog, *, words: int = 3, delay_s: float = 0.0,
                 reply_delay_s: float = 0.0) -> Starlette:
    async def chat(request: Request) -> Response:
        body = await request.json()
        log.bodies.append(body)
        if body.get("stream"):
            return StreamingResponse(stream(body), media_type="text/event-stream")
        if reply_delay_s:
            await asyncio.sleep(reply_delay_s)
        return JSONResponse({"id": "up-1", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "one two three"},
                                          "finish_reason": "stop"}], "usage": USAGE})

    async def stream(body: dict[str, Any]):  # type: ignore[no-untyped-def]
        log.streams_started += 1
        try:
            for i in range(words):
                if delay_s:
                    await asyncio.sleep(delay_s)
                chunk = {"choices": [{"index": 0, "delta": {"content": ("" if i == 0 else " ") + f"w{i}"},
                                      "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
            yield f"data: {json.dumps({'choices': [], 'usage': USAGE})}\n\n"
            yield "data: [DONE]\n\n"
            log.streams_finished += 1
        except BaseException:
            log.streams_cancelled += 1
            raise

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
