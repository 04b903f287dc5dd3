"""The Redis shared state against the real Redis: atomic across replicas, and what happens when it is down."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from tests.conftest import REDIS_BASE

from wattwise.access.redis_state import RedisState, StateUnavailable
from wattwise.access.state import SharedState, open_state

pytestmark = pytest.mark.anyio


def closed_port_url() -> str:
    """A Redis URL on a loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


async def test_reservations_are_atomic_across_two_replicas(redis_prefix: str) -> None:
    a, b = RedisState(url=REDIS_BASE, prefix=redis_prefix), RedisState(url=REDIS_BASE, prefix=redis_prefix)
    try:
        assert isinstance(a, SharedState)
        results = await asyncio.gather(*[(a if i % 2 else b).reserve("k1:usd", amount=0.25, limit=5.0,
                                                                      expires_at=None) for i in range(200)])
        assert sum(r.ok for r in results) == 20
        assert await a.usage("k1:usd") == (0.0, 5.0)
        await b.settle("k1:usd", reserved=0.25, actual=0.0625)
        assert await a.usage("k1:usd") == (0.0625, 4.75)
        assert (await a.reserve("k1:usd", amount=0.1875, limit=5.0, expires_at=None)).ok
        assert not (await b.reserve("k1:usd", amount=0.001, limit=5.0, expires_at=None)).ok
    finally:
        await a.aclose()
        await b.aclose()


async def test_seed_only_sets_an_unknown_bucket_and_expires(redis_prefix: str) -> None:
    import time

    state = RedisState(url=REDIS_BASE, prefix=redis_prefix)
    try:
        assert not await state.known("b")
        assert await state.seed("b", used=7.0, expires_at=time.time() + 60)
        assert not await state.seed("b", used=1.0, expires_at=time.time() + 60)
        assert await state.known("b")
        assert not (await state.reserve("b", amount=4.0, limit=10.0, expires_at=None)).ok
        assert (await state.reserve("b", amount=3.0, limit=10.0, expires_at=None)).ok
        assert await state.usage("b") == (7.0, 3.0)
        await state.settle("gone", reserved=1.0, actual=1.0)  # a bucket whose period ended: no-op
        assert not await state.known("gone")
        assert await state.seed("short", used=1.0, expires_at=time.time() - 1)  # already over
        assert not await state.known("short")
    finally:
        await state.aclose()


async def test_rate_windows_are_shared_and_refunded(redis_prefix: str) -> None:
    a, b = RedisState(url=REDIS_BASE, prefix=redis_prefix), RedisState(url=REDIS_BASE, prefix=redis_prefix)
    try:
        hits = await asyncio.gather(*[(a if i % 2 else b).hit("rpm:k1", cost=1, limit=10, window_s=60)
                                      for i in range(50)])
        assert sum(h.allowed for h in hits) == 10
        refused = [h for h in hits if not h.allowed]
        assert refused[0].remaining == 0 and 0 < refused[0].reset_s <= 60
        await a.refund("rpm:k1", cost=3, window_s=60)
        again = await b.hit("rpm:k1", cost=3, limit=10, window_s=60)
        assert again.allowed and again.remaining == 0
        short = await a.hit("tiny", cost=1, limit=1, window_s=0.2)
        assert short.allowed and not (await a.hit("tiny", cost=1, limit=1, window_s=0.2)).allowed
        await asyncio.sleep(0.25)
        assert (await b.hit("tiny", cost=1, limit=1, window_s=0.2)).allowed  # a new window
    finally:
        await a.aclose()
        await b.aclose()


async def test_redis_down_fails_closed_for_budgets_and_as_configured_for_limits() -> None:
    closed = RedisState(url=closed_port_url(), timeout_s=0.2)
    open_ = RedisState(url=closed_port_url(), timeout_s=0.2, limits_fail_open=True)
    try:
        for attempt in (closed.reserve("b", amount=1, limit=2, expires_at=None), closed.known("b"),
                        closed.seed("b", used=0, expires_at=None), closed.usage("b"),
                        closed.hit("w", cost=1, limit=1, window_s=60),
                        open_.reserve("b", amount=1, limit=2, expires_at=None)):
            with pytest.raises(StateUnavailable) as caught:
                await attempt
            assert caught.value.status == 503
            body = caught.value.to_body()["error"]
            assert body["type"] == "server_error" and body["code"] == "state_unavailable"
        passed = await open_.hit("w", cost=1, limit=5, window_s=60)
        assert passed.allowed and passed.remaining == 5
        await closed.settle("b", reserved=1, actual=1)  # logged, never raised: the request is over
        await closed.refund("w", cost=1, window_s=60)
    finally:
        await closed.aclose()
        await open_.aclose()


def test_open_state_by_url() -> None:
    state = open_state("redis://127.0.0.1:6379/0")
    assert isinstance(state, RedisState) and isinstance(state, SharedState)


# -- two gateway replicas sharing PostgreSQL and Redis ------------------------------------------------

MASTER = "ww-test-master"
PRICE_OUT = 3.0  # $ per million output tokens; input is free, so a request's worst case is exact
MAX_TOKENS = 5
WORST_USD = MAX_TOKENS * PRICE_OUT / 1e6


class Replica:
    """One gateway replica in this process: its own store connections, access control and app."""

    def __init__(self, url: str, state: RedisState, *, delay_s: float = 0.02) -> None:
        from tests.conftest import make_config

        from wattwise.access.control import Access
        from wattwise.api.app import create_app
        from wattwise.backends.mock import MockBackend
        from wattwise.config import ModelConfig, PriceConfig
        from wattwise.gateway import Gateway
        from wattwise.metering.usage import Usage
        from wattwise.store.sql import open_store

        config = make_config(url, models={"metered": ModelConfig(backend="mock",
                                                                 price=PriceConfig(input=0.0, output=PRICE_OUT))})
        backend = MockBackend(name="metered", delay_s=delay_s, usage=Usage(input_tokens=9, output_tokens=MAX_TOKENS))
        self.gateway = Gateway(config=config, backends={"metered": backend}, store=open_store(url))
        self.access = Access(config=config, store=self.gateway.store, meter=self.gateway.meter,
                             environ={"WATTWISE_MASTER_KEY": MASTER}, state=state)
        self.app = create_app(self.gateway, access=self.access)

    async def __aenter__(self) -> Replica:
        await self.gateway.start()
        await self.access.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.access.stop()
        await self.gateway.stop()

    def client(self, key: str) -> Any:
        import httpx

        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://wattwise",
                                 headers={"authorization": f"Bearer {key}"})


def make_key(url: str, spec: dict[str, Any]) -> tuple[str, str]:
    """``(key, key id)`` of a new key in the store at ``url``."""
    import time

    from wattwise.access.admin import create_key
    from wattwise.store.access import AccessStore
    from wattwise.store.sql import opened

    with opened(url) as store:
        record, key = create_key(AccessStore(store=store), spec, secret=MASTER.encode(), actor="test",
                                 now=time.time())
    return key, record.id


CHAT = {"model": "metered", "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": "hi"}]}


async def test_two_replicas_never_overspend_a_shared_budget(pg_url: str, redis_prefix: str) -> None:
    budget = 20 * WORST_USD * (1 + 1e-9)  # fits exactly 20 requests at their (exact) worst case
    key, key_id = make_key(pg_url, {"name": "tight", "budget_usd": f"{budget!r}/month"})
    async with Replica(pg_url, RedisState(url=REDIS_BASE, prefix=redis_prefix)) as a, \
            Replica(pg_url, RedisState(url=REDIS_BASE, prefix=redis_prefix)) as b:
        async with a.client(key) as ca, b.client(key) as cb:
            responses = await asyncio.gather(*[(ca if i % 2 else cb).post("/v1/chat/completions", json=CHAT)
                                               for i in range(200)])
        codes = [r.status_code for r in responses]
        assert codes.count(200) == 20 and codes.count(429) == 180, {r.text for r in responses if r.status_code == 503}
        refused = next(r for r in responses if r.status_code == 429).json()["error"]
        assert refused["type"] == "insufficient_quota"
        served = {r.headers["x-wattwise-request-id"] for r in responses if r.status_code == 200}
    # Both replicas have stopped: every settlement is written. The durable record and the shared state agree.
    from wattwise.store.access import AccessStore
    from wattwise.store.sql import opened

    with opened(pg_url) as store:
        spent_usd, _ = AccessStore(store=store).spent(key_id=key_id)
        rows = [r for r in store.fetch() if r.key_id == key_id]
    assert spent_usd <= budget and spent_usd == pytest.approx(20 * WORST_USD)
    assert {r.id for r in rows if r.status == "ok"} == served
    assert sum(r.cost_usd or 0.0 for r in rows) <= budget
    state = RedisState(url=REDIS_BASE, prefix=redis_prefix)
    try:
        [(used, reserved)] = [await state.usage(name) for name in await _buckets(redis_prefix, key_id)]
        assert used == pytest.approx(20 * WORST_USD) and used <= budget and reserved == pytest.approx(0.0)
    finally:
        await state.aclose()


async def _buckets(prefix: str, key_id: str) -> list[str]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_BASE, decode_responses=True)
    try:
        found = [k async for k in client.scan_iter(match=f"{prefix}b:*{key_id}*")]
    finally:
        await client.aclose()
    return [k.removeprefix(prefix + "b:") for k in found]


async def test_rate_limits_are_shared_across_replicas(pg_url: str, redis_prefix: str) -> None:
    key, _ = make_key(pg_url, {"name": "limited", "rpm": 10})
    async with Replica(pg_url, RedisState(url=REDIS_BASE, prefix=redis_prefix), delay_s=0) as a, \
            Replica(pg_url, RedisState(url=REDIS_BASE, prefix=redis_prefix), delay_s=0) as b, \
            a.client(key) as ca, b.client(key) as cb:
        responses = await asyncio.gather(*[(ca if i % 2 else cb).post("/v1/chat/completions", json=CHAT)
                                           for i in range(30)])
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 10 and codes.count(429) == 20
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["x-ratelimit-limit-requests"] == "10"


async def test_redis_down_is_a_503_never_a_500(pg_url: str) -> None:
    budgeted, _ = make_key(pg_url, {"name": "budgeted", "budget_usd": "5/month"})
    limited, _ = make_key(pg_url, {"name": "limited", "rpm": 100})
    down = closed_port_url()
    async with Replica(pg_url, RedisState(url=down, timeout_s=0.2), delay_s=0) as closed, \
            Replica(pg_url, RedisState(url=down, timeout_s=0.2, limits_fail_open=True), delay_s=0) as open_:
        for replica, key, status in [(closed, budgeted, 503), (open_, budgeted, 503),  # budgets: always closed
                                     (closed, limited, 503), (open_, limited, 200)]:   # limits: as configured
            async with replica.client(key) as client:
                response = await client.post("/v1/chat/completions", json=CHAT)
            assert response.status_code == status, response.text
            if status == 503:
                error = response.json()["error"]
                assert error["type"] == "server_error" and error["code"] == "state_unavailable"
                assert response.headers["retry-after"] == "1"
                assert response.headers["x-wattwise-request-id"].startswith("req_")


async def test_a_lost_bucket_is_seeded_again_keeping_reservations(redis_prefix: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import redis.asyncio as aioredis

    from wattwise.access import redis_state

    monkeypatch.setattr(redis_state, "KNOWN_TTL_S", 0.05)
    state = RedisState(url=REDIS_BASE, prefix=redis_prefix)
    raw = aioredis.Redis.from_url(REDIS_BASE)
    try:
        assert await state.seed("b", used=2.0, expires_at=None)
        assert await state.known("b")
        await raw.delete(f"{redis_prefix}b:b")  # Redis restarted empty, or evicted the bucket
        assert await state.known("b")  # still taken as held, for KNOWN_TTL_S
        assert (await state.reserve("b", amount=1.0, limit=10.0, expires_at=None)).ok
        await asyncio.sleep(0.06)
        assert not await state.known("b")  # made by reserve, never seeded: the next request seeds it
        assert await state.seed("b", used=2.5, expires_at=None)  # the store's figure is added
        assert await state.usage("b") == (2.5, 1.0)
        assert await state.known("b") and not await state.seed("b", used=9.0, expires_at=None)
    finally:
        await raw.aclose()
        await state.aclose()
