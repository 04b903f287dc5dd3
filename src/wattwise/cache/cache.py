"""The response cache: decide whether a request may be answered from it, look it up, remember answers.

Per request (:meth:`ResponseCache.plan`): the mode is ``wattwise.cache`` if the request names it
(``"off"``, ``"exact"``, ``"semantic"``), else ``[cache] default`` for a deterministic request
(temperature 0 or a ``seed``) and ``off`` for any other. ``Cache-Control: no-cache`` skips the lookup
(the fresh answer is still kept); ``no-store`` skips both. A request with ``n > 1`` is not cached.
A mode the config cannot honour (the cache off, or semantic not enabled) is a 400 naming
``wattwise.cache``.

Lookup (:meth:`ResponseCache.lookup`): the exact entry first; then, in semantic mode, the nearest
entries of the same namespace and context (:mod:`wattwise.cache.key`), best first: a candidate the
guard finds different in an answer-determining part is skipped; otherwise the learned thresholds
say ``hit``, ``miss``, or ``verify``: the request goes upstream, and once its answer is in, it is
compared with the candidate's (:meth:`ResponseCache.remember`), which is the evidence thresholds
learn from. An entry whose model's fingerprint changed (another upstream model, URL or weights) is
stale: dropped, never served.

A hit costs no model spend; its energy is the lookup's, estimated as its duration × ``[cache]
lookup_watts``; it names the request its answer came from and what that answer cost (saved).

Usage::

    plan = cache.plan(body, principal=principal, cache_control=request.headers.get("cache-control"))
    found = await cache.lookup(plan)          # a Hit, or None (plan.status says miss or bypass)
    ...
    cache.remember(plan, body=answer_body, model="small", outcome=outcome, request_id=..., tag=...)
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from wattwise.cache.entry import Entry, stored_body
from wattwise.cache.key import Mode, RequestKey, deterministic, namespace_of, payload_key, request_key
from wattwise.cache.stores import CacheStore, CacheUnavailable
from wattwise.config import CacheConfig
from wattwise.exceptions import InvalidRequest
from wattwise.metering.energy import EnergyReading
from wattwise.request import ChatBody

log = logging.getLogger(__name__)
LOG_EVERY_S = 10.0


class Semantic(Protocol):
    """What the semantic cache needs: an embedding, the guard, and learned thresholds."""

    def embed(self, text: str) -> np.ndarray: ...

    def features(self, text: str) -> dict[str, Any]: ...

    def differs(self, cached: dict[str, Any], asked: dict[str, Any]) -> str | None: ...

    def klass(self, cached: dict[str, Any], asked: dict[str, Any]) -> str: ...

    def verdict(self, klass: str, similarity: float, *, refused: bool) -> str: ...

    def observe(self, klass: str, similarity: float, same: bool, refused: bool) -> None: ...

    def same_answer(self, cached: str, fresh: str) -> bool: ...


@dataclass(kw_only=True)
class Probe:
    """A semantic candidate held back for verification: compared with the fresh answer later."""

    entry: Entry
    klass: str
    similarity: float
    refused: bool


@dataclass(kw_only=True)
class Plan:
    """One request's cache plan and, once looked up, its status (``hit``, ``miss``, ``bypass``)."""

    mode: Mode
    key: RequestKey | None
    lookup: bool
    save: bool
    status: str = "bypass"
    vector: np.ndarray | None = None
    features: dict[str, Any] | None = None
    probe: Probe | None = None
    lookup_s: float = 0.0


@dataclass(kw_only=True)
class Hit:
    entry: Entry
    kind: str  # "exact" | "semantic"
    similarity: float
    energy: EnergyReading

    @property
    def reason(self) -> str:
        how = "exact" if self.kind == "exact" else f"semantic, cosine {self.similarity:.3f}"
        return f"cache hit ({how}) of {self.entry.request_id}"


def _directives(cache_control: str | None) -> set[str]:
    return {part.strip().lower() for part in (cache_control or "").split(",") if part.strip()}


class ResponseCache:
    """Plans, looks up and remembers answers over one :class:`~wattwise.cache.stores.CacheStore`."""

    def __init__(self, *, config: CacheConfig, store: CacheStore, fingerprints: dict[str, str],
                 semantic: Semantic | None = None) -> None:
        self.config = config
        self.store = store
        self.fingerprints = fingerprints
        self.semantic = semantic
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned = 0.0

    # -- the plan ------------------------------------------------------------------------------

    def plan(self, body: ChatBody, *, principal: Any = None, cache_control: str | None = None) -> Plan:
        asked = body.wattwise.cache
        if asked == "semantic" and self.semantic is None:
            raise InvalidRequest("the semantic cache is not enabled on this gateway ([cache] semantic = false)",
                                 param="wattwise.cache", code="unsupported_value")
        mode: Mode = asked if asked is not None else self.config.default if deterministic(body) else "off"
        if mode == "off" or body.n != 1:  # n > 1 is never cached
            return Plan(mode="off", key=None, lookup=False, save=False)
        directives = _directives(cache_control)
        key = request_key(body, namespace=namespace_of(principal, share=self.config.share))
        return Plan(mode=mode, key=key, lookup="no-cache" not in directives and "no-store" not in directives,
                    save="no-store" not in directives)

    def plan_payload(self, path: str, data: dict[str, Any], *, principal: Any = None,
                     cache_control: str | None = None) -> Plan:
        """The plan of an ``/embeddings`` request: exact only, when ``[cache] embeddings`` is on
        (an embedding model gives the same vectors for the same input, so no opt-in per request)."""
        if not self.config.embeddings or path != "/embeddings":
            return Plan(mode="off", key=None, lookup=False, save=False)
        directives = _directives(cache_control)
        key = payload_key(path, data, namespace=namespace_of(principal, share=self.config.share))
        return Plan(mode="exact", key=key, lookup="no-cache" not in directives and "no-store" not in directives,
                    save="no-store" not in directives)

    # -- the lookup ----------------------------------------------------------------------------

    async def lookup(self, plan: Plan) -> Hit | None:
        if not plan.lookup or plan.key is None:
            return None
        started = time.perf_counter()
        try:
            hit = await self._lookup(plan, plan.key)
        except CacheUnavailable as exc:
            self._warn(exc)
            plan.status, plan.save = "bypass", False
            return None
        except Exception:  # an unreadable entry (a foreign value under our prefix): never the request's failure
            log.exception("response cache lookup failed; the request bypasses the cache")
            plan.status, plan.save = "bypass", False
            return None
        plan.lookup_s = time.perf_counter() - started
        plan.status = "hit" if hit else "miss"
        if hit is not None:
            hit.energy = EnergyReading(joules=plan.lookup_s * self.config.lookup_watts, source="estimated")
        return hit

    def _fresh(self, entry: Entry) -> bool:
        return self.fingerprints.get(entry.model) == entry.fingerprint and entry.expires > time.time()

    async def _lookup(self, plan: Plan, key: RequestKey) -> Hit | None:
        entry = await self.store.get(key.exact)
        if entry is not None:
            if self._fresh(entry):
                return Hit(entry=entry, kind="exact", similarity=1.0, energy=EnergyReading(joules=None,
                                                                                          source="unknown"))
            await self.store.delete(entry.key)  # another upstream model now: never serve its old answers
        if plan.mode != "semantic" or self.semantic is None or key.text is None:
            return None
        semantic = self.semantic
        plan.vector = semantic.embed(key.text)
        plan.features = semantic.features(key.text)
        for evidence in await self.store.sync():  # other replicas' entries and verifications
            semantic.observe(*evidence)
        found = await self.store.nearest(key.namespace, key.context, plan.vector, k=self.config.candidates)
        for candidate, similarity in found:
            if not self._fresh(candidate) or candidate.features is None:
                continue
            refused = semantic.differs(candidate.features, plan.features) is not None
            klass = semantic.klass(candidate.features, plan.features)
            verdict = semantic.verdict(klass, similarity, refused=refused)
            if verdict == "verify" and (plan.probe is None or not refused):
                # Verified candidates (refused ones too: the request goes upstream anyway) are the
                # evidence the thresholds learn from.
                plan.probe = Probe(entry=candidate, klass=klass, similarity=similarity, refused=refused)
            if refused:
                continue  # a guarded difference: a further candidate may still do
            if verdict == "hit":
                plan.probe = None
                return Hit(entry=candidate, kind="semantic", similarity=similarity,
                           energy=EnergyReading(joules=None, source="unknown"))
            break  # the best candidate the guard passes decides: the others are further away
        return None

    # -- remembering ---------------------------------------------------------------------------

    def remember(self, plan: Plan, *, body: dict[str, Any], model: str, request_id: str, tag: str | None,
                 principal: Any, cost_usd: float | None, energy_j: float | None) -> None:
        """Keep a served answer (in the background: the response does not wait for the store)."""
        if not plan.save or plan.key is None or plan.status == "hit" or model not in self.fingerprints:
            return
        now = time.time()
        entry = Entry(key=plan.key.exact, namespace=plan.key.namespace, context=plan.key.context,
                      body=stored_body(body), model=model, fingerprint=self.fingerprints[model],
                      request_id=request_id, created=now, expires=now + self.config.ttl_s,
                      upstream_model=body.get("model") if isinstance(body.get("model"), str) else None,
                      key_id=getattr(principal, "key_id", None), team=getattr(principal, "team", None), tag=tag,
                      cost_usd=cost_usd, energy_j=energy_j, features=plan.features, vector=plan.vector)
        entry.size = len(entry.to_json(with_vector=False)) + (entry.vector.nbytes if entry.vector is not None else 0)
        if entry.size > self.config.max_entry_bytes:
            return
        self._spawn(self._remember(plan, entry))

    async def _remember(self, plan: Plan, entry: Entry) -> None:
        try:
            if plan.mode == "semantic" and entry.vector is None and self.semantic is not None and plan.key \
                    and plan.key.text is not None:  # not looked up (Cache-Control: no-cache): index it anyway
                entry.vector = self.semantic.embed(plan.key.text)
                entry.features = self.semantic.features(plan.key.text)
            if plan.probe is not None and self.semantic is not None:
                same = self.semantic.same_answer(answer_text(plan.probe.entry.body), answer_text(entry.body))
                evidence = (plan.probe.klass, plan.probe.similarity, same, plan.probe.refused)
                self.semantic.observe(*evidence)
                await self.store.publish(evidence)
            await self.store.put(entry, ttl_s=self.config.ttl_s)
        except CacheUnavailable as exc:
            self._warn(exc)
        except Exception:  # keeping an answer is a side line: the request it came from is already served
            log.exception("request %s: its answer could not be kept in the cache", entry.request_id)

    def _spawn(self, work: Any) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a synchronous caller): nothing to keep it with
            work.close()
            return
        task = loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for answers still being remembered (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def purge(self, **filters: str) -> int:
        return await self.store.purge(**filters)

    async def aclose(self) -> None:
        await self.settle()
        await self.store.aclose()

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned >= LOG_EVERY_S:
            self._warned = now
            log.warning("response cache unavailable, requests bypass it: %s", exc)


def answer_text(body: dict[str, Any]) -> str:
    """The first choice's content (or its tool calls, as JSON), what a verification compares."""
    import json

    choices = body.get("choices") or [{}]
    message = choices[0].get("message") or {}
    if message.get("tool_calls"):
        return json.dumps(message["tool_calls"], sort_keys=True)
    content = message.get("content")
    return content if isinstance(content, str) else ""
