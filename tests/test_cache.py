"""The response cache through the HTTP API: exact hits (streamed and not), who may be served what,
stale upstreams, Cache-Control, metering of hits, purges, and semantic hits behind the guard."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from tests.test_passthrough import MSG, TOOL_STREAM, USAGE, Upstream, events, serve_upstream, sse

from wattwise.api.cache import redacted_url
from wattwise.backends.transport import MockRequest
from wattwise.cache.entry import Entry
from wattwise.cache.key import namespace_of, request_key
from wattwise.cache.stores import MemoryStore
from wattwise.config import CacheConfig
from wattwise.gateway import Gateway
from wattwise.reports.usage import format_table, summarize
from wattwise.request import chat_body
from wattwise.store.sql import TraceStore

pytestmark = pytest.mark.anyio

ANSWER = {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "gpt-up-0613",
          "system_fingerprint": "fp_1",
          "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                       "message": {"role": "assistant", "content": "It is sunny in Paris."}}],
          "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def reply_json(request: MockRequest) -> Any:
    if request.json.get("stream"):
        return 200, sse(*TOOL_STREAM), {"content-type": "text/event-stream"}
    return 200, json.dumps(ANSWER).encode(), {"content-type": "application/json"}


@pytest.fixture
def cached_gateway(store: TraceStore) -> Callable[..., Any]:
    def make(cache: CacheConfig | None = None, *, upstream_model: str = "gpt-up", semantic: Any = None,
             reply: Any = reply_json, gateway_store: TraceStore | None = None) -> Any:
        def prepare(gateway: Gateway) -> None:
            if semantic is not None:
                assert gateway.cache is not None
                gateway.cache.semantic = semantic

        return serve_upstream(gateway_store or store, reply, upstream_model=upstream_model, cache=cache,
                              prepare=prepare)

    return make


async def ask(client: httpx.AsyncClient, gateway: Gateway, body: dict[str, Any],
              headers: dict[str, str] | None = None) -> httpx.Response:
    response = await client.post("/v1/chat/completions", json=body, headers=headers or {})
    assert gateway.cache is not None
    await gateway.cache.settle()  # answers are kept in the background
    return response


DET = {"model": "up", "messages": MSG, "temperature": 0}


def chats(upstream: Upstream) -> list[dict[str, Any]]:
    """The chat requests the upstream got (not its health probes)."""
    return [body for body in upstream.bodies if body and "messages" in body]


async def test_a_deterministic_request_is_answered_once_then_from_the_cache(cached_gateway: Any) -> None:
    async with cached_gateway() as (client, upstream, gateway):
        first = await ask(client, gateway, DET)
        second = await ask(client, gateway, DET)
        assert len(chats(upstream)) == 1
        assert first.headers["x-wattwise-cache"] == "miss" and second.headers["x-wattwise-cache"] == "hit"
        assert second.headers["x-wattwise-cache-kind"] == "exact"
        assert second.headers["x-wattwise-cache-source"] == first.headers["x-wattwise-request-id"]
        a, b = first.json(), second.json()
        # The same answer, with this request's own id and time; a hit costs nothing.
        assert b["choices"] == a["choices"] and b["usage"] == a["usage"] and b["model"] == "up"
        assert b["system_fingerprint"] == "fp_1"
        assert b["id"] != a["id"] and b["id"].endswith(second.headers["x-wattwise-request-id"][4:])
        assert second.headers["x-wattwise-cost-usd"] == "0"
        assert float(second.headers["x-wattwise-energy-j"]) >= 0
        assert b["wattwise"]["cost_source"] == "cache_hit"
        assert b["wattwise"]["cache"]["saved_usd"] == pytest.approx((20 * 1.0 + 10 * 2.0) / 1e6)
        gateway.writer.flush()
        row = gateway.store.get(second.headers["x-wattwise-request-id"])
        assert row is not None and row.cache == "hit" and row.cache_source == first.headers["x-wattwise-request-id"]
        assert row.cost_usd == 0 and row.cost_source == "cache_hit" and row.output_tokens == 0
        assert row.saved_usd == pytest.approx(40e-6) and row.route_policy == "cache"
        metrics = (await client.get("/metrics")).text
        assert 'wattwise_cache_requests_total{kind="exact",result="hit"} 1.0' in metrics
        assert "wattwise_cache_saved_usd_total 4e-05" in metrics
        total = summarize(gateway.store.fetch())[-1]
        assert (total.requests, total.cache_hits) == (2, 1) and total.saved_usd == pytest.approx(40e-6)
        assert total.cost_usd == pytest.approx(40e-6)  # only the first answer was paid for
        assert "saved $" in format_table([total])


async def test_sampled_requests_bypass_unless_they_opt_in(cached_gateway: Any) -> None:
    async with cached_gateway() as (client, upstream, gateway):
        sampled = {"model": "up", "messages": MSG}
        for _ in range(2):
            response = await ask(client, gateway, sampled)
            assert response.headers["x-wattwise-cache"] == "bypass"
        opted = {**sampled, "wattwise": {"cache": "exact"}}
        await ask(client, gateway, opted)
        response = await ask(client, gateway, opted)
        assert response.headers["x-wattwise-cache"] == "hit" and len(chats(upstream)) == 3
        off = {**DET, "wattwise": {"cache": "off"}}
        await ask(client, gateway, off)
        assert (await ask(client, gateway, off)).headers["x-wattwise-cache"] == "bypass"
        # wattwise's own field never reaches the upstream
        assert all("wattwise" not in body for body in chats(upstream))


async def test_every_answer_determining_field_is_part_of_the_key(cached_gateway: Any) -> None:
    async with cached_gateway() as (client, _upstream, gateway):
        await ask(client, gateway, DET)
        variants = [{**DET, "temperature": 0, "seed": 7}, {**DET, "max_tokens": 5}, {**DET, "tools": TOOLS},
                    {**DET, "response_format": {"type": "json_object"}}, {**DET, "stop": ["."]},
                    {**DET, "model": "auto"},
                    {**DET, "messages": [{"role": "system", "content": "Be brief."}, *MSG]},
                    {**DET, "messages": [{"role": "user", "content": MSG[0]["content"] + " "}]}]
        for body in variants:
            assert (await ask(client, gateway, body)).headers["x-wattwise-cache"] == "miss", body
        # ... but not the fields that never change the answer
        same = {**DET, "user": "someone", "metadata": {"a": "b"}}
        assert (await ask(client, gateway, same)).headers["x-wattwise-cache"] == "hit"


async def test_cache_control_no_cache_and_no_store(cached_gateway: Any) -> None:
    async with cached_gateway() as (client, upstream, gateway):
        stored = await ask(client, gateway, DET, {"cache-control": "no-store"})
        assert stored.headers["x-wattwise-cache"] == "bypass"
        assert (await ask(client, gateway, DET, {"cache-control": "no-cache"})).headers["x-wattwise-cache"] == "bypass"
        # no-store kept nothing; no-cache skipped the lookup but kept the fresh answer
        assert (await ask(client, gateway, DET)).headers["x-wattwise-cache"] == "hit"
        assert len(chats(upstream)) == 2


async def test_streamed_hits_replay_the_answer_as_chunks(cached_gateway: Any) -> None:
    body = {**DET, "tools": TOOLS, "stream": True, "stream_options": {"include_usage": True}}
    async with cached_gateway() as (client, upstream, gateway):
        live = await ask(client, gateway, body)
        hit = await ask(client, gateway, body)
        assert hit.headers["x-wattwise-cache"] == "hit" and len(chats(upstream)) == 1
        assert hit.text.endswith("data: [DONE]\n\n")
        chunks = events(hit.text)
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
        assert {c["system_fingerprint"] for c in chunks} == {"fp_1"}  # as the live chunks had it
        calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or []]
        assert calls == [{"index": 0, "id": "call_1", "type": "function",
                          "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]
        reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c["choices"])
        assert reasoning == "think"
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
        assert chunks[-1]["usage"] == USAGE and chunks[-1]["wattwise"]["cost_source"] == "cache_hit"
        assert events(live.text)[-1]["usage"] == USAGE
        # The streamed answer also serves the same request unstreamed.
        plain = await ask(client, gateway, {k: v for k, v in body.items() if k not in ("stream", "stream_options")})
        assert plain.headers["x-wattwise-cache"] == "hit"
        message = plain.json()["choices"][0]["message"]
        assert message["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
        assert plain.json()["choices"][0]["finish_reason"] == "tool_calls"


async def test_with_the_openai_sdk_a_hit_reads_like_the_live_answer(cached_gateway: Any) -> None:
    import openai

    async with cached_gateway() as (client, upstream, gateway):
        sdk = openai.AsyncOpenAI(api_key="unused", base_url="http://wattwise/v1", http_client=client)
        live = await sdk.chat.completions.create(model="up", messages=MSG, temperature=0)  # type: ignore[arg-type]
        assert gateway.cache is not None
        await gateway.cache.settle()
        hit = await sdk.chat.completions.create(model="up", messages=MSG, temperature=0)  # type: ignore[arg-type]
        assert hit.choices[0].message == live.choices[0].message and len(chats(upstream)) == 1


async def test_tenants_do_not_share_entries_unless_configured(store: TraceStore) -> None:
    def key(principal: Any, share: Any) -> str:
        body = chat_body(DET)
        return request_key(body, namespace=namespace_of(principal, share=share)).exact

    class P:
        def __init__(self, key_id: str, team: str | None) -> None:
            self.key_id, self.team = key_id, team

    a, b, c = P("key_a", "search"), P("key_b", "search"), P("key_c", None)
    assert key(a, "key") != key(b, "key")
    assert key(a, "team") == key(b, "team") != key(c, "team")
    assert key(a, "all") == key(c, "all")


async def test_a_changed_upstream_model_never_serves_old_answers(cached_gateway: Any, store: TraceStore) -> None:
    async with cached_gateway(CacheConfig()) as (client, upstream, gateway):
        await ask(client, gateway, DET)
        assert gateway.cache is not None
        entries = gateway.cache.store
    async with cached_gateway(CacheConfig(), upstream_model="gpt-up-2") as (client, upstream, gateway):
        assert gateway.cache is not None
        gateway.cache.store = entries  # the same entries, another upstream model behind the name
        response = await ask(client, gateway, DET)
        assert response.headers["x-wattwise-cache"] == "miss" and len(chats(upstream)) == 1


async def test_an_unhonourable_cache_mode_is_a_400(cached_gateway: Any) -> None:
    async with cached_gateway() as (client, _upstream, gateway):
        response = await ask(client, gateway, {**DET, "wattwise": {"cache": "semantic"}})
        assert response.status_code == 400 and response.json()["error"]["param"] == "wattwise.cache"
        response = await ask(client, gateway, {**DET, "wattwise": {"cache": "sometimes"}})
        assert response.status_code == 400 and response.json()["error"]["param"] == "wattwise.cache"
    async with cached_gateway(CacheConfig(enabled=False)) as (client, _upstream, gateway):
        response = await client.post("/v1/chat/completions", json={**DET, "wattwise": {"cache": "exact"}})
        assert response.status_code == 400 and response.json()["error"]["param"] == "wattwise.cache"
        response = await client.post("/v1/chat/completions", json=DET)
        assert response.status_code == 200 and "x-wattwise-cache" not in response.headers


async def test_purge_through_the_admin_api(cached_gateway: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATTWISE_MASTER_KEY", "mk-test-master-key")
    admin = {"authorization": "Bearer mk-test-master-key"}
    async with cached_gateway() as (client, _upstream, gateway):
        created = await client.post("/v1/wattwise/keys", json={"name": "app"}, headers=admin)
        user = {"authorization": "Bearer " + created.json()["key"]}
        await ask(client, gateway, DET, user)
        await ask(client, gateway, {**DET, "seed": 1}, user)
        assert (await ask(client, gateway, DET, user)).headers["x-wattwise-cache"] == "hit"
        # the master key's own requests are another tenant
        assert (await ask(client, gateway, DET, admin)).headers["x-wattwise-cache"] == "miss"
        denied = await client.post("/v1/wattwise/cache/purge", json={"model": "up"}, headers=user)
        assert denied.status_code == 403
        bad = await client.post("/v1/wattwise/cache/purge", json={}, headers=admin)
        assert bad.status_code == 400
        shown = await client.get("/v1/wattwise/cache", headers=admin)
        assert shown.json()["enabled"] and shown.json()["entries"] == 3
        assert (await client.get("/v1/wattwise/cache", headers=user)).status_code == 403
        purged = await client.post("/v1/wattwise/cache/purge", json={"key_id": created.json()["id"]}, headers=admin)
        assert purged.status_code == 200 and purged.json()["purged"] == 2
        assert (await ask(client, gateway, DET, user)).headers["x-wattwise-cache"] == "miss"
        assert (await ask(client, gateway, DET, admin)).headers["x-wattwise-cache"] == "hit"


class FixedSemantic:
    """A stand-in for the semantic checks with fixed vectors: serves above 0.9, verifies above 0.8."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = {k: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for k, v in vectors.items()}
        self.evidence: list[tuple[str, float, bool]] = []

    def embed(self, text: str) -> np.ndarray:
        return self.vectors[text]

    def features(self, text: str) -> dict[str, Any]:
        return {"numbers": [w for w in text.split() if w.isdigit()]}

    def differs(self, cached: dict[str, Any], asked: dict[str, Any]) -> str | None:
        return None if cached == asked else "numbers differ"

    def klass(self, cached: dict[str, Any], asked: dict[str, Any]) -> str:
        return "all"

    def verdict(self, klass: str, similarity: float, *, refused: bool) -> str:
        return "hit" if similarity >= 0.9 else "verify" if similarity >= 0.8 else "miss"

    def observe(self, klass: str, similarity: float, same: bool, refused: bool) -> None:
        self.evidence.append((klass, similarity, same, refused))

    def same_answer(self, cached: str, fresh: str) -> bool:
        return cached == fresh


def user(text: str) -> dict[str, Any]:
    return {**DET, "messages": [{"role": "user", "content": text}], "wattwise": {"cache": "semantic"}}


async def test_semantic_hits_pass_the_guard_and_verifications_feed_the_thresholds(cached_gateway: Any) -> None:
    semantic = FixedSemantic({"what is 12 times 7": [1, 0, 0], "what is twelve times 7 please": [1, 0.1, 0],
                              "what is 12 times 8": [1, 0.05, 0], "how much is 12 times 7": [1, 0.6, 0]})
    async with cached_gateway(CacheConfig(semantic=False), semantic=semantic) as (client, upstream, gateway):
        await ask(client, gateway, user("what is 12 times 7"))
        near = await ask(client, gateway, user("what is twelve times 7 please"))
        assert near.headers["x-wattwise-cache"] == "miss"  # the guard: "12" is not in this one
        guarded = await ask(client, gateway, user("what is 12 times 8"))
        assert guarded.headers["x-wattwise-cache"] == "miss" and len(chats(upstream)) == 3
        # similar enough to verify, not to serve: asked upstream, and the answers compared
        verified = await ask(client, gateway, user("how much is 12 times 7"))
        assert verified.headers["x-wattwise-cache"] == "miss" and len(chats(upstream)) == 4
        assert semantic.evidence == [("all", pytest.approx(1 / np.sqrt(1.36), abs=1e-4), True, False)]
        semantic.vectors["what is 12 times 7 ?"] = semantic.vectors["what is 12 times 7"] * 0 + np.asarray(
            [0.995, 0.0998, 0], dtype=np.float32)
        hit = await ask(client, gateway, user("what is 12 times 7 ?"))
        assert hit.headers["x-wattwise-cache"] == "hit" and hit.headers["x-wattwise-cache-kind"] == "semantic"
        assert hit.json()["wattwise"]["cache"]["similarity"] > 0.99 and len(chats(upstream)) == 4
        # another system prompt is another context: never a semantic hit across it
        other = {**user("what is 12 times 7 ?"),
                 "messages": [{"role": "system", "content": "Answer in French."},
                              {"role": "user", "content": "what is 12 times 7 ?"}]}
        assert (await ask(client, gateway, other)).headers["x-wattwise-cache"] == "miss"


async def test_the_shipped_guard_and_thresholds_end_to_end(cached_gateway: Any) -> None:
    """With the real embedding, guard and thresholds: shut until evidence opens them; then a rephrasing
    is served and a changed number is not."""
    async with cached_gateway(CacheConfig(semantic=True)) as (client, _upstream, gateway):
        assert gateway.cache is not None and gateway.cache.semantic is not None
        await ask(client, gateway, user("How do I reset my router password?"))
        again = user("How can I reset my router password?")
        assert (await ask(client, gateway, again)).headers["x-wattwise-cache"] == "miss"  # no evidence yet
        thresholds = gateway.cache.semantic.thresholds  # type: ignore[attr-defined]
        for klass in ("near", "far"):  # evidence: wrong candidates at low similarity, right ones near 1
            for _ in range(600):
                thresholds.observe(klass, 0.6, False, refused=False)
            for _ in range(1600):
                thresholds.observe(klass, 0.99, True, refused=False)
        assert thresholds.threshold("near") is not None
        served = [(await ask(client, gateway, again)).headers["x-wattwise-cache"] for _ in range(5)]
        assert "hit" in served  # a sampled few are still verified
        await ask(client, gateway, user("What is 12 times 7?"))
        for other in ("What is 12 times 8?", "What is 13 times 7?", "What is not 12 times 7?"):
            assert (await ask(client, gateway, user(other))).headers["x-wattwise-cache"] == "miss"


def test_the_cache_admin_view_hides_a_redis_password() -> None:
    assert redacted_url("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redacted_url("redis://user:s3cret@cache/0") == "redis://user:***@cache/0"
    assert redacted_url("redis://cache:6379/0") == "redis://cache:6379/0"


async def test_an_answer_kept_under_no_cache_is_indexed_for_semantic_hits(cached_gateway: Any) -> None:
    semantic = FixedSemantic({"what is 12 times 7": [1, 0, 0], "what is 12 times 7 ?": [0.995, 0.0998, 0]})
    async with cached_gateway(CacheConfig(), semantic=semantic) as (client, _upstream, gateway):
        first = await ask(client, gateway, user("what is 12 times 7"), {"cache-control": "no-cache"})
        assert first.headers["x-wattwise-cache"] == "bypass"
        hit = await ask(client, gateway, user("what is 12 times 7 ?"))
        assert hit.headers["x-wattwise-cache"] == "hit" and hit.headers["x-wattwise-cache-kind"] == "semantic"


EMBEDDING = {"object": "list", "model": "text-embed-up",
             "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 0.3]}],
             "usage": {"prompt_tokens": 4, "total_tokens": 4}}


def reply_embeddings(request: MockRequest) -> Any:
    if request.url.endswith("/embeddings"):
        return 200, json.dumps(EMBEDDING).encode(), {"content-type": "application/json"}
    return reply_json(request)


async def test_embeddings_are_kept_when_configured(cached_gateway: Any) -> None:
    ask_ = {"model": "up", "input": "wattwise caches embeddings"}
    async with cached_gateway(CacheConfig(embeddings=True), reply=reply_embeddings) as (client, upstream, gateway):
        assert gateway.cache is not None
        first = await client.post("/v1/embeddings", json=ask_)
        await gateway.cache.settle()
        second = await client.post("/v1/embeddings", json=ask_)
        other = await client.post("/v1/embeddings", json={**ask_, "input": "something else"})
        embedded = [b for b in upstream.bodies if b and "input" in b]
        assert len(embedded) == 2  # the repeat was not asked upstream
        assert first.headers["x-wattwise-cache"] == "miss" and second.headers["x-wattwise-cache"] == "hit"
        assert other.headers["x-wattwise-cache"] == "miss"
        a, b = first.json(), second.json()
        assert b["data"] == a["data"] and b["usage"] == a["usage"] and b["model"] == "up"
        assert b["wattwise"]["cost_usd"] == 0 and b["wattwise"]["cache"]["source_request_id"] == \
            first.headers["x-wattwise-request-id"]
        gateway.writer.flush()
        row = gateway.store.get(second.headers["x-wattwise-request-id"])
        assert row is not None and row.cache == "hit" and row.cost_source == "cache_hit"
    async with cached_gateway(reply=reply_embeddings) as (client, upstream, gateway):  # off by default
        for _ in range(2):
            response = await client.post("/v1/embeddings", json=ask_)
            assert response.status_code == 200 and "x-wattwise-cache" not in response.headers
        assert len([b for b in upstream.bodies if b and "input" in b]) == 2


def test_auto_requests_are_keyed_by_what_the_router_reads() -> None:
    def key(body: dict[str, Any]) -> str:
        return request_key(chat_body(body), namespace="key:-").exact

    auto = {**DET, "model": "auto"}
    # the router adjusts per application (tag, user): another app may get another model's answer
    assert key({**auto, "user": "a"}) != key({**auto, "user": "b"})
    assert key({**auto, "wattwise": {"tag": "a"}}) != key({**auto, "wattwise": {"tag": "b"}})
    assert key({**auto, "wattwise": {"quality_target": 0.5}}) != key({**auto, "wattwise": {"quality_target": 0.9}})
    # a named model's answer does not depend on who asks
    assert key({**DET, "user": "a"}) == key({**DET, "user": "b"})


async def test_the_in_process_store_is_bounded_in_bytes() -> None:
    store = MemoryStore(max_entries=100, max_bytes=1000)
    for i in range(10):
        now = time.time()
        await store.put(Entry(key=f"k{i}", namespace="n", context="c", body={}, model="m", fingerprint="f",
                              request_id="r", created=now, expires=now + 60, size=300), ttl_s=60)
    assert len(store) == 3 and store.bytes == 900
    assert [key for key in store.entries] == ["k7", "k8", "k9"]  # the least recently used went first


async def test_an_unreadable_entry_means_bypass_not_a_500(cached_gateway: Any) -> None:
    async with cached_gateway() as (client, upstream, gateway):
        assert gateway.cache is not None

        async def broken(key: str) -> Any:
            raise ValueError("not an entry")

        gateway.cache.store.get = broken  # type: ignore[method-assign]
        response = await ask(client, gateway, DET)
        assert response.status_code == 200 and response.headers["x-wattwise-cache"] == "bypass"
        assert len(chats(upstream)) == 1
