"""Any OpenAI-compatible chat endpoint over HTTP: vLLM, SGLang, llama.cpp server, Ollama, OpenAI…

Reads usage including cached input tokens and reasoning tokens, and maps every upstream failure
into wattwise's exceptions here, at the boundary: 5xx → :class:`UpstreamError` (502), timeouts →
:class:`UpstreamTimeout` (504), an upstream 4xx → :class:`UpstreamRejected` with its status.

Usage::

    backend = OpenAIHTTPBackend(name="fast", base_url="http://127.0.0.1:8080/v1",
                                upstream_model="qwen3-8b", api_key=os.environ.get("KEY"))
    completion = await backend.complete(request)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from wattwise.backends.base import Backend, ChatRequest, Completion, Forwarded, StreamEvent
from wattwise.backends.transport import AiohttpTransport, Transport
from wattwise.exceptions import (
    BackendError,
    ConfigError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
)
from wattwise.metering.usage import Usage

if TYPE_CHECKING:
    from wattwise.backends.registry import BuildContext
    from wattwise.config import ModelConfig


class OpenAIHTTPBackend(Backend):
    """Calls ``{base_url}/chat/completions`` over an injected :class:`Transport` (aiohttp by default)."""

    kind = "openai_http"

    def __init__(self, *, name: str, base_url: str, upstream_model: str, api_key: str | None = None,
                 timeout_s: float = 120.0, connect_timeout_s: float = 5.0, max_connections: int = 256,
                 transport: Transport | None = None) -> None:
        super().__init__(name=name)
        self.upstream_model = upstream_model
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.models_url = base_url.rstrip("/") + "/models"
        self.headers = {"content-type": "application/json"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.transport: Transport = transport or AiohttpTransport(
            timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, max_connections=max_connections)

    def _body(self, request: ChatRequest, *, stream: bool) -> bytes:
        if request.sent is not None:
            # The client's fields go upstream as sent (max_completion_tokens, user, n, tools …).
            body: dict[str, Any] = {**request.sent, "model": self.upstream_model, "messages": request.messages}
        else:
            body = {**request.extra, "model": self.upstream_model, "messages": request.messages}
            for key in ("max_tokens", "temperature", "top_p", "stop", "seed"):
                value = getattr(request, key)
                if value is not None:
                    body[key] = value
            if request.logprobs:
                body["logprobs"] = True
        if stream:
            # Usage is always asked for (it is what we meter); the client sees it only if it asked.
            body["stream"] = True
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        else:
            body.pop("stream_options", None)
        return json.dumps(body).encode()

    async def _post(self, url: str, body: bytes) -> tuple[bytes, dict[str, str]]:
        """POST and read the reply: its body and headers, or the upstream's error mapped."""
        try:
            status, content, headers = await self.transport.post(url, body, headers=self.headers)
        except BackendError as exc:
            raise _named(self.name, exc) from None
        if status >= 400:
            raise map_status(self.name, status, content, headers, secrets=self._secrets())
        return content, headers

    @asynccontextmanager
    async def _stream_lines(self, url: str, body: bytes) -> AsyncIterator[tuple[AsyncIterator[bytes], dict[str, str]]]:
        """POST for a stream: its lines and headers, or the upstream's error mapped (the lines are
        read inside the context; leaving it closes the connection)."""
        try:
            async with self.transport.stream(url, body, headers=self.headers) as (status, lines, headers):
                if status >= 400:
                    content = b"".join([line async for line in lines])
                    raise map_status(self.name, status, content, headers, secrets=self._secrets())
                yield lines, headers
        except BackendError as exc:
            raise _named(self.name, exc) from None

    async def complete(self, request: ChatRequest) -> Completion:
        content, headers = await self._post(self.url, self._body(request, stream=False))
        try:
            return _parse_completion(_loads(content), passed_headers(headers))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise UpstreamError(f"model '{self.name}': malformed upstream response ({exc})") from None

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        async with self._stream_lines(self.url, self._body(request, stream=True)) as (lines, headers):
            kind = headers.get("content-type", "text/event-stream").split(";")[0].strip().lower()
            if kind != "text/event-stream":
                raise UpstreamError(f"model '{self.name}': upstream answered a stream with {kind!r}, "
                                    "not server-sent events")
            async for event in parse_sse(self.name, lines):
                yield event

    def _secrets(self) -> list[str]:
        auth = self.headers.get("authorization", "")
        return [auth.removeprefix("Bearer ")] if auth else []

    def _forward_body(self, body: dict[str, Any], *, stream: bool) -> bytes:
        out = {**body, "model": self.upstream_model}
        if stream and self.kind == "openai_http":
            out["stream"] = True
        return json.dumps(out).encode()

    async def forward(self, path: str, body: dict[str, Any]) -> Completion:
        content, headers = await self._post(self.base_url + path, self._forward_body(body, stream=False))
        try:
            data = _loads(content)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            usage = Usage.from_openai(data.get("usage")) if isinstance(data.get("usage"), dict) else Usage()
        except (ValueError, TypeError, AttributeError) as exc:
            raise UpstreamError(f"model '{self.name}': malformed upstream response ({exc})") from None
        return Completion(text=None, usage=usage, raw=data, headers=passed_headers(headers))

    async def forward_stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[Forwarded]:
        async with self._stream_lines(self.base_url + path, self._forward_body(body, stream=True)) as (lines, _):
            async for line in lines:
                yield Forwarded(line=line, usage=_line_usage(line))

    async def health(self) -> bool:
        """``GET {base_url}/models``: up when the server answers below 500."""
        try:
            status = await self.transport.get(self.models_url, headers=self.headers)
        except BackendError:
            return False
        return status < 500

    async def aclose(self) -> None:
        await self.transport.aclose()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "upstream_model": self.upstream_model}


def _named(name: str, exc: BackendError) -> BackendError:
    """Say which model failed (transport errors do not know it; our own messages already do)."""
    prefix = f"model '{name}': "
    if not exc.message.startswith(prefix):
        exc.message = prefix + exc.message
        exc.args = (exc.message,)
    return exc


def _line_usage(line: bytes) -> Usage | None:
    """Usage in a forwarded SSE line: a completions chunk's ``usage`` or a Responses
    ``response.completed`` event's ``response.usage``."""
    if not line.startswith(b"data:") or b'"usage"' not in line:
        return None
    try:
        data = _loads(line[5:].strip())
        usage = data.get("usage") or (data.get("response") or {}).get("usage")
        return Usage.from_openai(usage) if isinstance(usage, dict) else None
    except (ValueError, TypeError, AttributeError):
        return None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _loads(content: bytes) -> Any:
    """JSON as the RFC has it: NaN and Infinity from an upstream are a broken response, not numbers."""
    return json.loads(content, parse_constant=_reject_constant)


PASSED_HEADERS = ("retry-after", "retry-after-ms")


def passed_headers(headers: dict[str, str]) -> dict[str, str]:
    """The upstream headers a client should see: ``retry-after`` and ``x-ratelimit-*``."""
    return {k: v for k, v in headers.items() if k in PASSED_HEADERS or k.startswith("x-ratelimit-")}


def _parse_completion(data: Any, headers: dict[str, str]) -> Completion:
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
        raise ValueError("no choices")
    choice = data["choices"][0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise ValueError("choices[0].message is not an object")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError("choices[0].message.content is not a string")
    extra = {k: v for k, v in message.items() if k not in ("role", "content") and v is not None}
    logprobs = choice.get("logprobs")
    return Completion(text=content, finish_reason=choice.get("finish_reason") or "stop",
                      usage=Usage.from_openai(data.get("usage")), logprob=_logprob(choice),
                      message_extra=extra, logprobs=logprobs if isinstance(logprobs, dict) else None,
                      raw=data, headers=headers)


def _logprob(choice: dict[str, Any]) -> float | None:
    content = (choice.get("logprobs") or {}).get("content")
    if not content or not isinstance(content, list):
        return None
    return float(sum(item.get("logprob", 0.0) for item in content if isinstance(item, dict)))


_SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")


async def parse_sse(name: str, lines: AsyncIterator[bytes]) -> AsyncIterator[StreamEvent]:
    """Each upstream chunk as an event carrying it whole (``raw``), with what metering needs read out.

    A line that is not server-sent events, a chunk that is not a chunk, or a stream that ends before
    ``[DONE]`` or a finish reason is an upstream fault (502), never an empty answer recorded ok.
    """
    finished, done = False, False
    async for line in lines:
        line = line.strip()
        if not line:
            continue
        if not line.startswith(_SSE_FIELDS):
            raise UpstreamError(f"model '{name}': the upstream stream is not server-sent events")
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            break
        event = _chunk_event(name, payload)
        finished = finished or event.finish_reason is not None
        yield event
    if not (done or finished):
        raise UpstreamError(f"model '{name}': the upstream stream ended before it finished")


def _chunk_event(name: str, payload: bytes) -> StreamEvent:
    try:
        chunk = _loads(payload)
        if not isinstance(chunk, dict):
            raise ValueError("not an object")
        if "error" in chunk and "choices" not in chunk:
            raise UpstreamError(f"model '{name}': upstream error mid-stream: {_error_text(chunk)}")
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise ValueError("choices is not a list")
        usage = Usage.from_openai(chunk["usage"]) if chunk.get("usage") else None
        text, finish, logprobs = "", None, None
        for choice in choices:
            if not isinstance(choice, dict):
                raise ValueError("a choice is not an object")
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content") if isinstance(delta, dict) else None
            text = content if isinstance(content, str) else ""
            finish = choice.get("finish_reason") or None
            logprobs = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else None
    except UpstreamError:
        raise
    except (ValueError, TypeError, AttributeError) as exc:
        raise UpstreamError(f"model '{name}': malformed stream chunk ({exc})") from None
    return StreamEvent(raw=chunk, delta=text, finish_reason=finish, usage=usage, logprobs=logprobs)


def _error_text(data: Any) -> str:
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or "")
    return str(error or "")


_SECRET = re.compile(r"(?i)(bearer\s+|api[_-]?key[\"'=:\s]+|\bsk-)[A-Za-z0-9._~+/=-]{6,}")


def redact(text: str, secrets: list[str]) -> str:
    """Upstream text with keys taken out (an upstream that echoes ``Authorization`` must not leak it)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _SECRET.sub(lambda m: m.group(1) + "[redacted]", text)[:1000]


def _upstream_error(content: bytes) -> tuple[str, str | None, str | None, str | None]:
    """``(message, param, type, code)`` from an upstream error body, whatever its shape."""
    try:
        error = _loads(content).get("error") or {}
    except (ValueError, AttributeError):
        return content[:300].decode(errors="replace"), None, None, None
    if not isinstance(error, dict):
        return str(error)[:300], None, None, None
    param, kind, code = (error.get(k) for k in ("param", "type", "code"))
    return (str(error.get("message") or content[:300].decode(errors="replace")),
            param if isinstance(param, str) else None, kind if isinstance(kind, str) else None,
            code if isinstance(code, str) else None)


def _retry_after_s(headers: dict[str, str]) -> float | None:
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        if "retry-after" in headers:
            return max(0.0, float(headers["retry-after"]))
    except ValueError:
        return None  # an HTTP date: rare from model servers; treated as no hint
    return None


def map_status(name: str, status: int, content: bytes, headers: dict[str, str], *,
               secrets: list[str]) -> BackendError:
    """An upstream error reply as wattwise's exception: its status, type, code and rate-limit headers
    passed on; its text cleaned of control characters and anything that looks like a key."""
    message, param, kind, code = _upstream_error(content)
    text = redact(f"model '{name}': upstream returned {status}: {message}", secrets)
    passed = passed_headers(headers)
    retry_after = _retry_after_s(headers)
    if status == 429:
        return UpstreamRateLimited(text, param=param, headers=passed, retry_after_s=retry_after)
    if status >= 500:
        return UpstreamError(text, headers=passed, retry_after_s=retry_after)
    rejected = UpstreamRejected(text, status=status, param=param, code=code or "upstream_rejected",
                                headers=passed)
    if kind in ("invalid_request_error", "authentication_error", "permission_error", "not_found_error"):
        rejected.error_type = kind
    return rejected


def from_config(name: str, spec: ModelConfig, context: BuildContext) -> OpenAIHTTPBackend:
    if not spec.base_url:
        raise ConfigError("an openai_http model needs base_url", key=f"models.{name}.base_url")
    api_key = None
    if spec.api_key_env:
        api_key = os.environ.get(spec.api_key_env)
        if api_key is None:
            raise ConfigError(f"environment variable {spec.api_key_env} is not set",
                              key=f"models.{name}.api_key_env")
    return OpenAIHTTPBackend(name=name, base_url=spec.base_url, upstream_model=spec.upstream_model or name,
                             api_key=api_key, timeout_s=spec.timeout_s,
                             connect_timeout_s=spec.connect_timeout_s, max_connections=spec.max_connections)
