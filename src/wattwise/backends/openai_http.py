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
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from wattwise.backends.base import Backend, ChatRequest, Completion, StreamEvent
from wattwise.backends.transport import AiohttpTransport, Transport
from wattwise.exceptions import BackendError, ConfigError, UpstreamError, UpstreamRejected
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
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.models_url = base_url.rstrip("/") + "/models"
        self.headers = {"content-type": "application/json"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.transport: Transport = transport or AiohttpTransport(
            timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, max_connections=max_connections)

    def _body(self, request: ChatRequest, *, stream: bool) -> bytes:
        body: dict[str, Any] = {**request.extra, "model": self.upstream_model,
                                "messages": request.messages}
        for key in ("max_tokens", "temperature", "top_p", "stop", "seed"):
            value = getattr(request, key)
            if value is not None:
                body[key] = value
        if request.logprobs:
            body["logprobs"] = True
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body).encode()

    async def complete(self, request: ChatRequest) -> Completion:
        try:
            status, content, _ = await self.transport.post(self.url, self._body(request, stream=False),
                                                        headers=self.headers)
        except BackendError as exc:
            raise _named(self.name, exc) from None
        if status >= 400:
            raise _map_status(self.name, status, content)
        try:
            return _parse_completion(json.loads(content))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise UpstreamError(f"model '{self.name}': malformed upstream response ({exc})") from None

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        body = self._body(request, stream=True)
        try:
            async with self.transport.stream(self.url, body, headers=self.headers) as (status, lines, _):
                if status >= 400:
                    raise _map_status(self.name, status, b"".join([line async for line in lines]))
                async for event in _parse_sse(self.name, lines):
                    yield event
        except BackendError as exc:
            raise _named(self.name, exc) from None

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


def _parse_completion(data: dict[str, Any]) -> Completion:
    choice = data["choices"][0]
    message = choice.get("message") or {}
    extra = {k: v for k, v in message.items() if k not in ("role", "content") and v is not None}
    return Completion(text=message.get("content") or "", finish_reason=choice.get("finish_reason") or "stop",
                      usage=Usage.from_openai(data.get("usage")), logprob=_logprob(choice),
                      message_extra=extra)


def _logprob(choice: dict[str, Any]) -> float | None:
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return None
    return float(sum(item.get("logprob", 0.0) for item in content))


async def _parse_sse(name: str, lines: AsyncIterator[bytes]) -> AsyncIterator[StreamEvent]:
    finish: str | None = None
    usage: Usage | None = None
    async for line in lines:
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            break
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise UpstreamError(f"model '{name}': malformed stream chunk") from None
        if chunk.get("usage"):
            usage = Usage.from_openai(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content") or ""
            finish = choice.get("finish_reason") or finish
            if delta:
                yield StreamEvent(delta=delta)
    yield StreamEvent(finish_reason=finish or "stop", usage=usage)


def _upstream_message(content: bytes) -> tuple[str, str | None]:
    try:
        error = json.loads(content).get("error") or {}
        if isinstance(error, dict):
            return str(error.get("message") or content[:200].decode(errors="replace")), error.get("param")
        return str(error), None
    except (ValueError, AttributeError):
        return content[:200].decode(errors="replace"), None


def _map_status(name: str, status: int, content: bytes) -> BackendError:
    message, param = _upstream_message(content)
    text = f"model '{name}': upstream returned {status}: {message}"
    if status >= 500:
        return UpstreamError(text)
    return UpstreamRejected(text, status=status, param=param)


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
