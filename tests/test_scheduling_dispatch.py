"""Dispatch through the gateway: retries with backoff, breaker, fallback in the trace row, streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from wattwise.api.app import create_app
from wattwise.backends.base import ChatRequest, Completion, StreamEvent
from wattwise.backends.mock import MockBackend
from wattwise.build import build_backends, build_dispatcher
from wattwise.config import parse_config
from wattwise.exceptions import ConfigError, UpstreamError, UpstreamRejected
from wattwise.gateway import Gateway
from wattwise.scheduling.clock import VirtualClock
from wattwise.scheduling.dispatch import Dispatcher, Trail
from wattwise.scheduling.queue import BATCH, INTERACTIVE
from wattwise.scheduling.scheduler import ModelPolicy
from wattwise.store.sql import open_store

pytestmark = pytest.mark.anyio
REQ = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=4)
MSG = [{"role": "user", "content": "say hello"}]


class Flaky(MockBackend):
    """Fails its first ``failures`` calls (before any streamed byte), then answers."""

    def __init__(self, *, name: str, failures: int, error: Exception | None = None) -> None:
        super().__init__(name=name, reply=f"from {name}")
        self.failures = failures
        self.error = error or UpstreamError("upstream 503")

    async def complete(self, request: ChatRequest) -> Completion:
        if self.failures > 0:
            self.failures -= 1
            self.calls.append(request)
            raise self.error
        return await super().complete(request)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        async for event in super().stream(request):
            yield event


def dispatcher(members: dict[str, list[MockBackend]], clock: VirtualClock, failures: int = 2,
               **policies: ModelPolicy) -> Dispatcher:
    return Dispatcher.from_replicas({m: [(b, 1.0) for b in bs] for m, bs in members.items()},
                                    policies=policies, breakers={m: (failures, 30.0) for m in members}, clock=clock)


async def test_retry_with_exponential_backoff() -> None:
    clock = VirtualClock()
    flaky = Flaky(name="m", failures=2)
    d = dispatcher({"m": [flaky]}, clock, failures=5, m=ModelPolicy(retries=3, backoff_s=0.5))
    trail = Trail()
    done = await d.complete("m", REQ, trail=trail)
    assert done.text == "from m" and trail.attempts == 3 and trail.model == "m"
    assert clock.slept == [0.5, 1.0]


async def test_caller_mistake_is_not_retried() -> None:
    flaky = Flaky(name="m", failures=1, error=UpstreamRejected("bad", status=400))
    d = dispatcher({"m": [flaky]}, VirtualClock(), m=ModelPolicy(retries=3))
    with pytest.raises(UpstreamRejected):
        await d.complete("m", REQ)
    assert len(flaky.calls) == 1


async def test_breaker_opens_and_model_is_skipped_for_fallback() -> None:
    clock = VirtualClock()
    bad, good = Flaky(name="a", failures=100), MockBackend(name="b", reply="from b")
    d = dispatcher({"a": [bad], "b": [good]}, clock, a=ModelPolicy(retries=1, fallback=("b",)))
    breaker = d.scheduler.pool("a").replicas[0].breaker
    first = Trail()
    assert (await d.complete("a", REQ, trail=first)).text == "from b"
    assert first.model == "b" and first.attempts == 3
    assert breaker.state == "closed"  # one failed request, however many attempts, is one failure
    second = Trail()
    assert (await d.complete("a", REQ, trail=second)).text == "from b"
    assert second.attempts == 2 and breaker.state == "open"  # the second request's retry finds it open
    third = Trail()
    assert (await d.complete("a", REQ, trail=third)).text == "from b"
    assert len(bad.calls) == 3 and third.attempts == 1 and "circuit open" in third.notes[0]


async def test_second_replica_takes_over_from_failing_one() -> None:
    clock = VirtualClock()
    bad, good = Flaky(name="m", failures=100), MockBackend(name="m", reply="from replica 1")
    d = dispatcher({"m": [bad, good]}, clock, m=ModelPolicy(retries=1))
    trail = Trail()
    assert (await d.complete("m", REQ, trail=trail)).text == "from replica 1"
    assert trail.replica == 1


async def test_interactive_waiter_goes_before_batch_waiter() -> None:
    slow = MockBackend(name="m", reply="x", delay_s=0.02)
    d = dispatcher({"m": [slow]}, VirtualClock(), m=ModelPolicy(max_concurrency=1))
    order: list[str] = []

    async def run(tag: str, priority: int) -> None:
        await d.complete("m", REQ, priority=priority)
        order.append(tag)

    first = asyncio.create_task(run("first", INTERACTIVE))
    await asyncio.sleep(0)
    batch = asyncio.create_task(run("batch", BATCH))
    await asyncio.sleep(0)
    interactive = asyncio.create_task(run("interactive", INTERACTIVE))
    await asyncio.gather(first, batch, interactive)
    assert order == ["first", "interactive", "batch"]


async def test_stream_retried_before_first_byte_and_slot_released() -> None:
    flaky = Flaky(name="m", failures=1)
    d = dispatcher({"m": [flaky]}, VirtualClock(), m=ModelPolicy(retries=1, max_concurrency=1))
    trail = Trail()
    events = [e async for e in d.stream("m", REQ, trail=trail)]
    assert "".join(e.delta for e in events) == "from m" and trail.attempts == 2
    assert d.scheduler.headroom("m") == 1


CONFIG = """
[store]
url = "sqlite:///{db}"
flush_interval_s = 0.01

[models.primary]
backend = "mock"
retries = 1
retry_backoff_s = 0.0
fallback = ["backup"]
options = {{ fail_message = "primary is down" }}

[models.backup]
backend = "mock"
options = {{ reply = "backup answers" }}
replicas = [{{ weight = 1 }}, {{ weight = 2 }}]
"""


async def test_fallback_is_named_in_route_reason_and_trace_row(tmp_path: Path) -> None:
    config = parse_config(CONFIG.format(db=tmp_path / "t.db"))
    backends = build_backends(config)
    gateway = Gateway(config=config, backends=backends, store=open_store(config.store.url),
                      dispatcher=build_dispatcher(config, backends))
    assert [r.weight for r in gateway.dispatcher.scheduler.pool("backup").replicas] == [1.0, 2.0]
    await gateway.start()
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://w") as c:
        plain = await c.post("/v1/chat/completions", json={"model": "primary", "messages": MSG})
        streamed = await c.post("/v1/chat/completions", json={"model": "primary", "messages": MSG, "stream": True})
    assert plain.status_code == 200 and plain.headers["x-wattwise-model"] == "backup"
    assert plain.json()["choices"][0]["message"]["content"] == "backup answers"
    assert streamed.status_code == 200 and streamed.headers["x-wattwise-model"] == "backup"
    gateway.writer.flush()
    rows = gateway.store.fetch()
    await gateway.stop()
    assert [r.model for r in rows] == ["backup", "backup"]
    assert all("fallback primary→backup" in (r.route_reason or "") and "primary is down" in (r.route_reason or "")
               for r in rows)


def test_unknown_fallback_is_a_config_error() -> None:
    text = '[models.a]\nbackend = "mock"\nfallback = ["nope"]\n'
    with pytest.raises(ConfigError, match="nope"):
        parse_config(text)
