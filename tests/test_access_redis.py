"""The Redis shared state against the real Redis: atomic across replicas, and what happens when it is down."""

from __future__ import annotations

import asyncio
import socket

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
