"""A faithful fake of OpenAI's HTTP API, for end-to-end tests of what reaches an upstream and what comes back.

It answers the way OpenAI does, field for field: chat completions plain and streamed (role, content,
tool-call deltas in pieces, ``reasoning_content``, ``refusal``, per-token ``logprobs``, the usage
chunk), ``tools``, ``response_format``, ``n``, usage with cached and reasoning tokens,
``system_fingerprint`` and ``service_tier``, OpenAI's error bodies (400, and 429 with ``retry-after``
and ``x-ratelimit-*`` headers), and ``/v1/embeddings``, ``/v1/completions``, ``/v1/responses``,
``/v1/models``. A model named like a reasoning model (``o1…``, ``o3…``, ``o4…``, ``gpt-5…``) rejects
``max_tokens`` as OpenAI does and spends reasoning tokens. Every POST body is recorded.

Triggers in the last user message: ``[[400]]`` → a 400, ``[[429]]`` → a 429, ``[[refuse]]`` → a refusal.

Usage::

    log = FakeLog()
    with serve_in_thread(fake_openai_app(log)) as base:
        openai.OpenAI(base_url=base + "/v1", api_key="x").chat.completions.create(...)
    log.chat("marker")["max_completion_tokens"]
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

REPLY = "The quick brown fox jumps over the lazy dog."
REASONING = "Let me think about this step by step before answering."
REFUSAL = "I'm sorry, but I can't help with that."
FINGERPRINT = "fp_fake0a1b2c"
REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")
RATE_HEADERS = {"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "30000",
                "x-ratelimit-remaining-requests": "499", "x-ratelimit-remaining-tokens": "29000",
                "x-ratelimit-reset-requests": "120ms", "x-ratelimit-reset-tokens": "2s"}


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class FakeLog:
    """What the fake received, in order."""

    received: list[Received] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=itertools.count)

    def bodies(self, path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
        return [r.body for r in self.received if r.path == path]

    def find(self, marker: str, path: str = "/v1/chat/completions") -> list[Received]:
        """Requests to ``path`` whose body mentions ``marker`` anywhere."""
        return [r for r in self.received if r.path == path and marker in json.dumps(r.body)]

    def chat(self, marker: str, path: str = "/v1/chat/completions") -> dict[str, Any]:
        """The last body sent to ``path`` that mentions ``marker``; fails if there is none."""
        found = self.find(marker, path)
        assert found, f"no request to {path} mentioned {marker!r}; got {len(self.received)} requests"
        return found[-1].body


def error_body(message: str, *, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error(status: int, message: str, *, headers: dict[str, str] | None = None, **kw: Any) -> JSONResponse:
    return JSONResponse(error_body(message, **kw), status_code=status, headers=headers)


def rate_limited() -> JSONResponse:
    headers = {**RATE_HEADERS, "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s",
               "retry-after": "1", "retry-after-ms": "1000"}
    return error(429, "Rate limit reached for requests per min (RPM): Limit 500, Used 500, Requested 1.",
                 type_="requests", code="rate_limit_exceeded", headers=headers)


def tokenize(text: str) -> list[str]:
    """Word pieces with their leading space, the way OpenAI's tokens usually split English."""
    return re.findall(r"\s*\S+", text)


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def count_prompt(messages: list[dict[str, Any]], tools: list[Any] | None = None) -> int:
    words = sum(len(text_of(m.get("content")).split()) + 4 for m in messages)
    return words + 10 * len(tools or [])


def example_for(schema: dict[str, Any]) -> Any:
    """A value that satisfies a (simple) JSON schema, as a strict structured-output model would give."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next(k for k in kind if k != "null")
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        return {name: example_for(sub) for name, sub in props.items()}
    if kind == "array":
        return [example_for(schema.get("items", {"type": "string"}))]
    return {"string": "Paris", "integer": 42, "number": 21.5, "boolean": True, "null": None}[kind]


def logprob_entries(tokens: list[str], top: int) -> list[dict[str, Any]]:
    out = []
    for i, tok in enumerate(tokens):
        lp = -0.01 * (i % 7 + 1)
        alts = [{"token": tok, "logprob": lp, "bytes": list(tok.encode())}]
        alts += [{"token": f" alt{j}", "logprob": lp - j, "bytes": list(f" alt{j}".encode())} for j in range(1, top)]
        out.append({"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": alts[:top]})
    return out


def usage(prompt: int, completion: int, reasoning: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": prompt // 2, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


@dataclass
class Answer:
    """One choice's answer, before it is rendered whole or as stream chunks."""

    content: str | None = None
    refusal: str | None = None
    tool_call: dict[str, Any] | None = None
    reasoning: str | None = None
    finish: str = "stop"

    def tokens(self) -> list[str]:
        return tokenize(self.content or self.refusal or "")


def pick_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = body.get("tools") or []
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none" or (body["messages"][-1].get("role") == "tool"):
        return None
    if isinstance(choice, dict):
        wanted = choice.get("function", {}).get("name")
        return next((t for t in tools if t.get("function", {}).get("name") == wanted), tools[0])
    return tools[0]


def answer(body: dict[str, Any], index: int, limit: int | None, reasoning_model: bool) -> Answer:
    last = body["messages"][-1]
    said = text_of(last.get("content"))
    out = Answer(reasoning=REASONING if reasoning_model else None)
    tool = pick_tool(body)
    fmt = body.get("response_format") or {}
    if "[[refuse]]" in said:
        out.refusal = REFUSAL
    elif tool is not None:
        fn = tool["function"]
        args = json.dumps(example_for(fn.get("parameters") or {"type": "object"}))
        out.tool_call = {"id": f"call_fake{index}x{len(said)}", "type": "function",
                         "function": {"name": fn["name"], "arguments": args}}
        out.finish = "tool_calls"
    elif last.get("role") == "tool":
        out.content = f"The tool said: {said}"
    elif fmt.get("type") == "json_schema":
        out.content = json.dumps(example_for(fmt["json_schema"].get("schema") or {}))
    elif fmt.get("type") == "json_object":
        out.content = json.dumps({"result": "ok"})
    else:
        out.content = REPLY if index == 0 else f"Answer {index}: {REPLY}"
    visible = out.tokens()
    budget = None if limit is None else max(limit - reasoning_tokens(out), 0)
    if out.content is not None and budget is not None and len(visible) > budget:
        out.content = "".join(visible[:budget])
        out.finish = "length"
    return out


def reasoning_tokens(out: Answer) -> int:
    return len(tokenize(out.reasoning or ""))


def completion_tokens(out: Answer) -> int:
    args = out.tool_call["function"]["arguments"] if out.tool_call else ""
    return len(out.tokens()) + len(tokenize(args)) + reasoning_tokens(out)


class Chat:
    """One chat-completion request: its answers, rendered whole or as chunks."""

    def __init__(self, body: dict[str, Any], n_id: int) -> None:
        self.body = body
        self.id = f"chatcmpl-fake{n_id}"
        self.created = int(time.time())
        self.reasoning_model = bool(REASONING_MODEL.match(body["model"]))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        self.answers = [answer(body, i, limit, self.reasoning_model) for i in range(int(body.get("n") or 1))]
        self.top = int(body.get("top_logprobs") or 1) if body.get("logprobs") else 0
        prompt = count_prompt(body["messages"], body.get("tools"))
        self.usage = usage(prompt, sum(completion_tokens(a) for a in self.answers),
                           sum(reasoning_tokens(a) for a in self.answers))

    def head(self, obj: str) -> dict[str, Any]:
        tier = self.body.get("service_tier")
        return {"id": self.id, "object": obj, "created": self.created, "model": self.body["model"],
                "service_tier": "default" if tier in (None, "auto") else tier,
                "system_fingerprint": FINGERPRINT}

    def logprobs(self, a: Answer) -> dict[str, Any] | None:
        if not self.top:
            return None
        entries = logprob_entries(a.tokens(), self.top)
        return {"content": None, "refusal": entries} if a.refusal else {"content": entries, "refusal": None}

    def whole(self) -> dict[str, Any]:
        choices = []
        for i, a in enumerate(self.answers):
            message: dict[str, Any] = {"role": "assistant", "content": a.content, "refusal": a.refusal,
                                       "annotations": []}
            if a.tool_call:
                message["tool_calls"] = [a.tool_call]
            if a.reasoning:
                message["reasoning_content"] = a.reasoning
            choices.append({"index": i, "message": message, "logprobs": self.logprobs(a),
                            "finish_reason": a.finish})
        return {**self.head("chat.completion"), "choices": choices, "usage": self.usage}

    def chunks(self) -> Iterator[dict[str, Any]]:
        include_usage = bool((self.body.get("stream_options") or {}).get("include_usage"))
        extra = {"usage": None} if include_usage else {}
        for i, a in enumerate(self.answers):
            for delta, logprobs, finish in self.deltas(a):
                yield {**self.head("chat.completion.chunk"), **extra,
                       "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
        if include_usage:
            yield {**self.head("chat.completion.chunk"), "choices": [], "usage": self.usage}

    def deltas(self, a: Answer) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None, str | None]]:
        yield {"role": "assistant", "content": "" if a.content is not None else None, "refusal": None}, None, None
        for tok in tokenize(a.reasoning or ""):
            yield {"reasoning_content": tok}, None, None
        key = "refusal" if a.refusal else "content"
        entries = logprob_entries(a.tokens(), self.top) if self.top else []
        for j, tok in enumerate(a.tokens()):
            lp = None
            if self.top:
                lp = {"content": None, "refusal": [entries[j]]} if a.refusal else {"content": [entries[j]],
                                                                                       "refusal": None}
            yield {key: tok}, lp, None
        if a.tool_call:
            fn = a.tool_call["function"]
            yield {"tool_calls": [{"index": 0, "id": a.tool_call["id"], "type": "function",
                                   "function": {"name": fn["name"], "arguments": ""}}]}, None, None
            args = fn["arguments"]
            for k in range(0, len(args), 5):
                yield {"tool_calls": [{"index": 0, "function": {"arguments": args[k:k + 5]}}]}, None, None
        yield {}, None, a.finish


def sse(events: Iterator[dict[str, Any]], *, done: bool = True) -> Iterator[bytes]:
    for event in events:
        yield b"data: " + json.dumps(event).encode() + b"\n\n"
    if done:
        yield b"data: [DONE]\n\n"


def check_chat(body: dict[str, Any]) -> Response | None:
    """OpenAI's own validation, for the cases clients and gateways get wrong."""
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return error(400, "Missing required parameter: 'messages'.", param="messages",
                     code="missing_required_parameter")
    if "model" not in body:
        return error(400, "you must provide a model parameter", param="model")
    if REASONING_MODEL.match(body["model"]) and body.get("max_tokens") is not None:
        return error(400, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                          "Use 'max_completion_tokens' instead.", param="max_tokens", code="unsupported_parameter")
    if body.get("top_logprobs") is not None and not body.get("logprobs"):
        return error(400, "logprobs must be set to true in order to use top_logprobs", param="top_logprobs",
                     code="invalid_value")
    said = text_of(body["messages"][-1].get("content"))
    if "[[400]]" in said:
        return error(400, "Invalid value for 'messages': the fake was asked to reject this.", param="messages",
                     code="invalid_value")
    if "[[429]]" in said:
        return rate_limited()
    return None


def fake_openai_app(log: FakeLog) -> Starlette:
    """The fake as an ASGI app; serve it with :func:`wattwise.inprocess.serve_in_thread`."""

    async def read(request: Request) -> dict[str, Any] | Response:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "We could not parse the JSON body of your request.", code="invalid_json")
        if not isinstance(body, dict):
            return error(400, "The body must be a JSON object.", code="invalid_json")
        log.received.append(Received(path=request.url.path, body=body, headers=dict(request.headers)))
        return body

    async def chat(request: Request) -> Response:
        body = await read(request)
        if isinstance(body, Response):
            return body
        rejected = check_chat(body)
        if rejected is not None:
            return rejected
        call = Chat(body, next(log.ids))
        headers = {**RATE_HEADERS, "x-request-id": f"req_fake{call.id}"}
        if body.get("stream"):
            return StreamingResponse(sse(call.chunks()), media_type="text/event-stream", headers=headers)
        return JSONResponse(call.whole(), headers=headers)

    async def completions(request: Request) -> Response:
        body = await read(request)
        if isinstance(body, Response):
            return body
        return legacy_completion(body, next(log.ids))

    async def embeddings(request: Request) -> Response:
        body = await read(request)
        if isinstance(body, Response):
            return body
        return embed(body)

    async def responses(request: Request) -> Response:
        body = await read(request)
        if isinstance(body, Response):
            return body
        return respond(body, next(log.ids))

    async def models(request: Request) -> Response:
        names = ["gpt-4o-fake", "o3-fake", "text-embedding-3-fake"]
        return JSONResponse({"object": "list", "data": [
            {"id": n, "object": "model", "created": 1700000000, "owned_by": "fake"} for n in names]})

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ])


def legacy_completion(body: dict[str, Any], n_id: int) -> Response:
    prompt = body.get("prompt", "")
    prompts = prompt if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt) else [prompt]
    tokens = tokenize(REPLY)
    limit = body.get("max_tokens") or 16
    text, finish = "".join(tokens[:limit]), ("length" if len(tokens) > limit else "stop")
    head = {"id": f"cmpl-fake{n_id}", "object": "text_completion", "created": int(time.time()),
            "model": body.get("model"), "system_fingerprint": FINGERPRINT}
    prompt_tokens = sum(len(str(p).split()) for p in prompts)
    used = usage(prompt_tokens, len(tokenize(text)) * len(prompts), 0)
    if body.get("stream"):
        def chunks() -> Iterator[dict[str, Any]]:
            for i in range(len(prompts)):
                for tok in tokenize(text):
                    yield {**head, "choices": [{"text": tok, "index": i, "logprobs": None, "finish_reason": None}]}
                yield {**head, "choices": [{"text": "", "index": i, "logprobs": None, "finish_reason": finish}]}
            if (body.get("stream_options") or {}).get("include_usage"):
                yield {**head, "choices": [], "usage": used}
        return StreamingResponse(sse(chunks()), media_type="text/event-stream")
    choices = [{"text": text, "index": i, "logprobs": None, "finish_reason": finish} for i in range(len(prompts))]
    return JSONResponse({**head, "choices": choices, "usage": used})


def vector(text: str, dims: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((digest[i % len(digest)] - 127.5) / 127.5, 6) for i in range(dims)]


def embed(body: dict[str, Any]) -> Response:
    raw = body.get("input")
    if raw is None or raw == [] or raw == "":
        return error(400, "'input' is a required property", param="input", code="missing_required_parameter")
    inputs = [raw] if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)) else raw
    dims = int(body.get("dimensions") or 8)
    data = []
    for i, item in enumerate(inputs):
        vec = vector(json.dumps(item), dims)
        value: Any = vec
        if body.get("encoding_format") == "base64":
            value = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(len(x) if isinstance(x, list) else len(str(x).split()) for x in inputs)
    return JSONResponse({"object": "list", "data": data, "model": body.get("model"),
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def respond(body: dict[str, Any], n_id: int) -> Response:
    """``/v1/responses``: one output message; streamed as OpenAI's typed events."""
    raw = body.get("input", "")
    said = raw if isinstance(raw, str) else json.dumps(raw)
    if "[[400]]" in said:
        return error(400, "Invalid value for 'input': the fake was asked to reject this.", param="input")
    text = REPLY
    msg_id = f"msg_fake{n_id}"
    prompt = len(said.split()) + len(str(body.get("instructions") or "").split())
    out_tokens = len(tokenize(text))
    item = {"type": "message", "id": msg_id, "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
    response = {"id": f"resp_fake{n_id}", "object": "response", "created_at": int(time.time()),
                "status": "completed", "error": None, "incomplete_details": None,
                "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
                "model": body.get("model"), "output": [item], "parallel_tool_calls": True,
                "previous_response_id": body.get("previous_response_id"), "reasoning": {"effort": None},
                "service_tier": "default", "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
                "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
                "user": body.get("user"), "metadata": body.get("metadata") or {},
                "usage": {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": prompt // 2},
                          "output_tokens": out_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                          "total_tokens": prompt + out_tokens}}
    if not body.get("stream"):
        return JSONResponse(response)

    def events() -> Iterator[dict[str, Any]]:
        started = {**response, "status": "in_progress", "output": [], "usage": None}
        yield {"type": "response.created", "response": started}
        yield {"type": "response.in_progress", "response": started}
        yield {"type": "response.output_item.added", "output_index": 0,
               "item": {**item, "status": "in_progress", "content": []}}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        yield {"type": "response.content_part.added", "item_id": msg_id, "output_index": 0, "content_index": 0,
               "part": part}
        for tok in tokenize(text):
            yield {"type": "response.output_text.delta", "item_id": msg_id, "output_index": 0, "content_index": 0,
                   "delta": tok, "logprobs": []}
        yield {"type": "response.output_text.done", "item_id": msg_id, "output_index": 0, "content_index": 0,
               "text": text, "logprobs": []}
        yield {"type": "response.content_part.done", "item_id": msg_id, "output_index": 0, "content_index": 0,
               "part": {**part, "text": text}}
        yield {"type": "response.output_item.done", "output_index": 0, "item": item}
        yield {"type": "response.completed", "response": response}

    def numbered() -> Iterator[bytes]:
        for seq, event in enumerate(events()):
            yield f"event: {event['type']}\ndata: {json.dumps({**event, 'sequence_number': seq})}\n\n".encode()

    return StreamingResponse(numbered(), media_type="text/event-stream")
