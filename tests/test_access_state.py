"""The in-process shared state: atomic reservations, settlement, seeding and fixed windows."""

from __future__ import annotations

import asyncio

import pytest

from wattwise.access.state import InProcessState, SharedState, open_state
from wattwise.exceptions import ConfigError

pytestmark = pytest.mark.anyio


async def test_reserve_is_all_or_nothing_under_concurrency() -> None:
    state = InProcessState()
    results = await asyncio.gather(*[state.reserve("b", amount=1.0, limit=20.0, expires_at=None)
                                     for _ in range(200)])
    assert sum(r.ok for r in results) == 20
    assert await state.usage("b") == (0.0, 20.0)
    await state.settle("b", reserved=1.0, actual=0.25)
    assert await state.usage("b") == (0.25, 19.0)


async def test_seed_only_sets_an_unknown_bucket_and_expiry_forgets() -> None:
    now = [1000.0]
    state = InProcessState(clock=lambda: now[0])
    assert not await state.known("b")
    assert await state.seed("b", used=7.0, expires_at=2000.0)
    assert not await state.seed("b", used=1.0, expires_at=2000.0)
    assert (await state.reserve("b", amount=4.0, limit=10.0, expires_at=2000.0)).ok is False
    now[0] = 2000.0
    assert not await state.known("b")


async def test_fixed_window_hits_refunds_and_resets() -> None:
    now = [60.0]
    state = InProcessState(clock=lambda: now[0])
    assert (await state.hit("w", cost=2, limit=3, window_s=60)).allowed
    refused = await state.hit("w", cost=2, limit=3, window_s=60)
    assert not refused.allowed and refused.remaining == 1 and refused.reset_s == 60
    await state.refund("w", cost=2, window_s=60)
    assert (await state.hit("w", cost=3, limit=3, window_s=60)).remaining == 0
    now[0] = 125.0
    fresh = await state.hit("w", cost=3, limit=3, window_s=60)
    assert fresh.allowed and fresh.reset_s == 55


def test_factory() -> None:
    assert isinstance(open_state(""), SharedState)
    with pytest.raises(ConfigError):
        open_state("memcached://x")
