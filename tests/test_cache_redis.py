"""The response cache shared by two replicas through the real Redis: entries, the semantic index,
verification evidence and purges; and a Redis that cannot be reached makes requests bypass it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import REDIS_BASE
from tests.test_cache import DET, FixedSemantic, ask, cached_gateway, chats, user  # noqa: F401

from wattwise.cache.entry import Entry
from wattwise.cache.stores import CacheUnavailable, RedisStore
from wattwise.config import CacheConfig
from wattwise.store.sql import open_store

pytestmark = pytest.mark.anyio


def entry(key: str, *, vector: list[float] | None = None, tag: str | None = None, model: str = "m") -> Entry:
    now = time.time()
    vec = None if vector is None else np.asarray(vector, dtype=np.float32) / np.linalg.norm(vector)
    return Entry(key=key, namespace="key:-", context="ctx", body={"choices": []}, model=model, fingerprint="f",
                 request_id="req_" + key, created=now, expires=now + 60, tag=tag, features={"n": []}, vector=vec)


async def test_two_stores_share_entries_index_and_evidence(redis_prefix: str) -> None:
    a = RedisStore(url=REDIS_BASE, prefix=redis_prefix)
    b = RedisStore(url=REDIS_BASE, prefix=redis_prefix)
    try:
        await a.put(entry("k1", vector=[1, 0, 0], tag="faq"), ttl_s=60)
        await a.put(entry("k2", vector=[0, 1, 0], model="other"), ttl_s=60)
        assert await b.sync() == []
        got = await b.get("k1")
        assert got is not None and got.request_id == "req_k1" and got.tag == "faq"
        query = np.asarray([0.99, 0.1, 0], dtype=np.float32)
        [(near, similarity)] = await b.nearest("key:-", "ctx", query / np.linalg.norm(query), k=1)
        assert near.key == "k1" and similarity > 0.9
        assert await b.nearest("key:-", "another context", np.asarray([1, 0, 0], dtype=np.float32), k=1) == []
        await a.publish(("near", 0.93, False, False))
        assert await b.sync() == [("near", 0.93, False, False)]
        assert await a.sync() == []  # its own evidence is already in its thresholds
        # A purge by tag on one replica: the other finds the entry gone and drops it from its index.
        assert await a.purge(tag="faq") == 1
        assert await b.get("k1") is None
        found = await b.nearest("key:-", "ctx", np.asarray([1, 0, 0], dtype=np.float32), k=2)
        assert [e.key for e, _ in found] == ["k2"] and "k1" not in b.indexes.part_of
        assert await b.purge(model="other", key_id="nobody") == 0
    finally:
        await a.aclose()
        await b.aclose()


async def test_purge_indexes_stay_bounded_and_a_purge_leaves_no_member_behind(redis_prefix: str) -> None:
    import redis.asyncio as aioredis

    store = RedisStore(url=REDIS_BASE, prefix=redis_prefix)
    client = aioredis.Redis.from_url(REDIS_BASE)
    try:
        gone = entry("old", tag="faq")
        gone.key_id, gone.expires = "k1", time.time() - 1  # already past its time
        await store.put(gone, ttl_s=60)
        for i in range(3):
            live = entry(f"e{i}", tag="faq")
            live.key_id = "k1"
            await store.put(live, ttl_s=60)
        # the expired member was trimmed by the later writes
        assert await client.zcard(redis_prefix + "by:tag:faq") == 3
        assert await store.purge(model="m") == 3
        for name in ("by:tag:faq", "by:key_id:k1", "by:model:m"):  # every set the entries were in
            assert await client.zcard(redis_prefix + name) == 0
    finally:
        await client.aclose()
        await store.aclose()


async def test_concurrent_syncs_take_each_piece_of_evidence_once(redis_prefix: str) -> None:
    a = RedisStore(url=REDIS_BASE, prefix=redis_prefix)
    b = RedisStore(url=REDIS_BASE, prefix=redis_prefix)
    try:
        await a.publish(("near", 0.9, True, False))
        batches = await asyncio.gather(*[b.sync() for _ in range(5)])
        assert sum(len(batch) for batch in batches) == 1
    finally:
        await a.aclose()
        await b.aclose()


async def test_any_answer_text_survives_redis(redis_prefix: str) -> None:
    store = RedisStore(url=REDIS_BASE, prefix=redis_prefix)
    try:
        odd = entry("k9")
        odd.body = {"choices": [{"message": {"content": "nul \x00, lone \ud800, accents é, emoji 😀"}}]}
        await store.put(odd, ttl_s=60)
        got = await store.get("k9")
        assert got is not None and got.body == odd.body
    finally:
        await store.aclose()


async def test_an_unreachable_redis_is_reported_not_raised_as_a_500(cached_gateway: Any) -> None:  # noqa: F811
    store = RedisStore(url="redis://127.0.0.1:1/0", timeout_s=0.2)
    with pytest.raises(CacheUnavailable):
        await store.get("k")
    cache = CacheConfig(url="redis://127.0.0.1:1/0", timeout_s=0.2)
    async with cached_gateway(cache) as (client, upstream, gateway):
        for _ in range(2):
            response = await ask(client, gateway, DET)
            assert response.status_code == 200 and response.headers["x-wattwise-cache"] == "bypass"
        assert len(chats(upstream)) == 2


async def test_two_gateway_replicas_serve_each_others_answers(cached_gateway: Any, redis_prefix: str,  # noqa: F811
                                                              tmp_path: Path) -> None:
    cache = CacheConfig(url=REDIS_BASE, prefix=redis_prefix)
    sem_a = FixedSemantic({"what is 12 times 7": [1, 0, 0], "what is 12 times 7 ?": [0.995, 0.0998, 0],
                           "how much is 12 times 7": [1, 0.6, 0]})
    sem_b = FixedSemantic(dict(sem_a.vectors))
    async with cached_gateway(cache, semantic=sem_a) as (client_a, _upstream_a, gw_a), \
            cached_gateway(cache, semantic=sem_b, gateway_store=open_store(f"sqlite:///{tmp_path}/b.db")) as (
                client_b, upstream_b, gw_b):
        first = await ask(client_a, gw_a, DET)
        second = await ask(client_b, gw_b, DET)
        assert second.headers["x-wattwise-cache"] == "hit" and len(chats(upstream_b)) == 0
        assert second.headers["x-wattwise-cache-source"] == first.headers["x-wattwise-request-id"]
        # The semantic index: an entry made on replica A is found by replica B.
        await ask(client_a, gw_a, user("what is 12 times 7"))
        hit = await ask(client_b, gw_b, user("what is 12 times 7 ?"))
        assert hit.headers["x-wattwise-cache"] == "hit" and hit.headers["x-wattwise-cache-kind"] == "semantic"
        # B's verification is evidence A learns from.
        await ask(client_b, gw_b, user("how much is 12 times 7"))
        assert len(sem_b.evidence) == 1
        await ask(client_a, gw_a, user("what is 12 times 7 ?"))
        assert gw_a.cache is not None
        assert sem_a.evidence == sem_b.evidence
