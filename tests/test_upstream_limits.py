"""Upstream rate limits, retries and the breaker: Retry-After, 429 pass-through, x-should-retry, pool waits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
from tests.upstream import UpstreamLog, upstream_app

from wattwise.api.app import create_app
from wattwise.backends.base import ChatRequest, Completion, StreamEvent
from wattwise.backends.mock import MockBackend
from wattwise.backends.transport import AiohttpTransport
from wattwise.build import build_backends, build_dispatcher
from wattwise.config import parse_config
from wattwise.exceptions import (
    BackendError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    WattwiseError,
)
from wattwise.gateway import Gateway
from wattwise.inprocess import serve_in_thread
from wattwise.scheduling.breaker import CLOSED, HALF_OPEN, OPEN
from wattwise.scheduling.clock import VirtualClock
from wattwise.scheduling.dispatch import Dispatcher, Trail, Unavailable
from wattwise.scheduling.scheduler import ModelPolicy
from wattwise.store.sql import open_store

pytestmark = pytest.mark.anyio
REQ = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=4)
LIMITS = {"retry-after": "2", "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
          "x-ratelimit-reset-requests": "2s"}


def limited(retry_after_s: float | None = 2.0) -> UpstreamRateLimited:
    headers = dict(LIMITS)
    if retry_after_s is None:
        headers.pop("retry-after")
    else:
        headers["retry-after"] = f"{retry_after_s:g}"
    return UpstreamRateLimited("model 'm': upstream returned 429: slow down", headers=headers,
                               retry_after_s=retry_after_s)


class Failing(MockBackend):
    """Raises a fresh error from ``make`` for its first ``failures`` calls, then answers."""

    def __init__(self, *, make: type[WattwiseError] | None = None, failures: int = 1_000,
                 error: WattwiseError | None = None) -> None:
        super().__init__(name="m", reply="fine")
        self.failures = failures
        self.error = error

    def _next_error(self) -> WattwiseError | None:
        if self.failures <= 0:
            return None
        self.failures -= 1
        error = self.error or UpstreamError("model 'm': upstream returned 500: boom")
        # A fresh exception each call, as a real backend raises, so headers set on one do not leak.
        if isinstance(error, UpstreamRateLimited):
            return UpstreamRateLimited(error.message, headers=error.headers, retry_after_s=error.retry_after_s)
        if isinstance(error, UpstreamRejected):
            return UpstreamRejected(error.message, status=error.status, headers=error.headers,
                                    retry_after_s=error.retry_after_s)
        if isinstance(error, BackendError):
            return type(error)(error.message, headers=error.headers, retry_after_s=error.retry_after_s)
        return error

    async def complete(self, request: ChatRequest) -> Completion:
        error = self._next_error()
        self.calls.append(request)
        if error is not None:
            raise error
        return await super().complete(request)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        error = self._next_error()
        if error is not None:
            self.calls.append(request)
            raise error
        async for event in super().stream(request):
            yield event


def dispatcher(backend: MockBackend, clock: VirtualClock, *, failures: int = 2, cooldown_s: float = 30.0,
               **policy: float) -> Dispatcher:
    return Dispatcher.from_replicas({"m": [(backend, 1.0)]}, policies={"m": ModelPolicy(**policy)},  # type: ignore[arg-type]
                                    breakers={"m": (failures, cooldown_s)}, clock=clock)


# -- Retry-After ---------------------------------------------------------------------------------


async def test_retry_after_is_honoured_between_attempts() -> None:
    clock = VirtualClock()
    backend = Failing(error=limited(2.0), failures=2)
    d = dispatcher(backend, clock, failures=5, retries=2, backoff_s=0.1)
    trail = Trail()
    assert (await d.complete("m", REQ, trail=trail)).text == "fine"
    assert clock.slept == [2.0, 2.0] and trail.attempts == 3


async def test_backoff_still_applies_when_longer_than_retry_after() -> None:
    clock = VirtualClock()
    d = dispatcher(Failing(error=limited(0.5), failures=1), clock, retries=1, backoff_s=3.0)
    await d.complete("m", REQ)
    assert clock.slept == [3.0]


async def test_retry_after_over_the_cap_is_passed_on_at_once() -> None:
    clock = VirtualClock()
    backend = Failing(error=limited(120.0))
    d = dispatcher(backend, clock, retries=3, retry_after_cap_s=10.0)
    with pytest.raises(UpstreamRateLimited) as caught:
        await d.complete("m", REQ)
    assert clock.slept == [] and len(backend.calls) == 1
    exc = caught.value
    assert exc.status == 429 and exc.headers["retry-after"] == "120"
    # The client may wait that long itself: wattwise does not forbid its retry.
    assert "x-should-retry" not in exc.headers


async def test_retry_after_over_the_cap_moves_on_to_the_fallback() -> None:
    clock = VirtualClock()
    d = Dispatcher.from_replicas({"m": [(Failing(error=limited(120.0)), 1.0)],
                                  "b": [(MockBackend(name="b", reply="from b"), 1.0)]},
                                 policies={"m": ModelPolicy(retries=3, retry_after_cap_s=10.0, fallback=("b",))},
                                 breakers={}, clock=clock)
    trail = Trail()
    assert (await d.complete("m", REQ, trail=trail)).text == "from b"
    assert clock.slept == [] and trail.model == "b"


# -- 429 pass-through ----------------------------------------------------------------------------


async def test_exhausted_429_passes_on_the_upstream_headers_and_type() -> None:
    clock = VirtualClock()
    backend = Failing(error=limited(1.0))
    d = dispatcher(backend, clock, retries=2, backoff_s=0.1)
    with pytest.raises(UpstreamRateLimited) as caught:
        await d.complete("m", REQ)
    exc = caught.value
    assert len(backend.calls) == 3 and clock.slept == [1.0, 1.0]
    assert exc.status == 429 and exc.to_body()["error"]["type"] == "rate_limit_error"
    assert exc.to_body()["error"]["code"] == "rate_limit_exceeded"
    assert exc.headers["retry-after"] == "1" and exc.headers["x-ratelimit-remaining-requests"] == "0"
    assert exc.headers["x-ratelimit-reset-requests"] == "2s"
    assert exc.headers["x-should-retry"] == "false"


async def test_a_plain_upstream_429_is_typed_as_a_rate_limit() -> None:
    backend = Failing(error=UpstreamRejected("upstream returned 429: busy", status=429,
                                             headers={"retry-after": "1"}, retry_after_s=1.0))
    d = dispatcher(backend, VirtualClock())
    with pytest.raises(UpstreamRateLimited) as caught:
        await d.complete("m", REQ)
    exc = caught.value
    assert exc.error_type == "rate_limit_error" and exc.status == 429
    assert exc.headers["retry-after"] == "1" and exc.retry_after_s == 1.0 and "busy" in exc.message


async def test_429s_do_not_open_the_breaker() -> None:
    clock = VirtualClock()
    backend = Failing(error=limited(None))
    d = dispatcher(backend, clock, failures=2, retries=1, backoff_s=0.0)
    for _ in range(5):
        with pytest.raises(UpstreamRateLimited):
            await d.complete("m", REQ)
    replica = d.scheduler.pool("m").replicas[0]
    assert replica.breaker.state == CLOSED and replica.breaker.consecutive == 0
    assert len(backend.calls) == 10  # later clients still reach the upstream and get its 429, not a 502


async def test_a_429_retry_goes_to_a_sibling_replica() -> None:
    clock = VirtualClock()
    limited_one, fine = Failing(error=limited(0.5)), MockBackend(name="m", reply="from replica 1")
    d = Dispatcher.from_replicas({"m": [(limited_one, 1.0), (fine, 1.0)]},
                                 policies={"m": ModelPolicy(retries=1, backoff_s=0.0)}, breakers={}, clock=clock)
    trail = Trail()
    assert (await d.complete("m", REQ, trail=trail)).text == "from replica 1"
    assert trail.replica == 1 and len(limited_one.calls) == 1
    assert d.scheduler.pool("m").replicas[0].breaker.state == CLOSED


async def test_stream_429_before_first_event_honours_retry_after() -> None:
    clock = VirtualClock()
    d = dispatcher(Failing(error=limited(1.5), failures=1), clock, retries=1, backoff_s=0.1)
    events = [e async for e in d.stream("m", REQ)]
    assert "".join(e.delta for e in events) == "fine" and clock.slept == [1.5]


# -- the breaker counts requests, not attempts ---------------------------------------------------


async def test_breaker_counts_one_failure_per_request_per_replica() -> None:
    clock = VirtualClock()
    backend = Failing()
    d = dispatcher(backend, clock, failures=2, retries=2, backoff_s=0.0)
    breaker = d.scheduler.pool("m").replicas[0].breaker
    with pytest.raises(UpstreamError) as first:
        await d.complete("m", REQ)
    assert not isinstance(first.value, Unavailable)  # the third attempt still reached the upstream
    assert len(backend.calls) == 3 and breaker.state == CLOSED and breaker.consecutive == 1
    with pytest.raises(UpstreamError):
        await d.complete("m", REQ)
    assert breaker.state == OPEN


async def test_each_replica_a_request_failed_on_is_charged_once() -> None:
    clock = VirtualClock()
    a, b = Failing(), Failing()
    d = Dispatcher.from_replicas({"m": [(a, 1.0), (b, 1.0)]}, policies={"m": ModelPolicy(retries=3, backoff_s=0.0)},
                                 breakers={"m": (5, 30.0)}, clock=clock)
    with pytest.raises(UpstreamError):
        await d.complete("m", REQ)
    assert len(a.calls) + len(b.calls) == 4
    assert [r.breaker.consecutive for r in d.scheduler.pool("m").replicas] == [1, 1]


async def test_half_open_probe_without_a_verdict_lets_another_probe_through() -> None:
    clock = VirtualClock()
    backend = Failing(failures=1)
    d = dispatcher(backend, clock, failures=1, cooldown_s=10.0)
    with pytest.raises(UpstreamError):
        await d.complete("m", REQ)
    breaker = d.scheduler.pool("m").replicas[0].breaker
    assert breaker.state == OPEN
    clock.advance_to(11.0)
    backend.failures, backend.error = 1, UpstreamRejected("bad field", status=400)
    with pytest.raises(UpstreamRejected):  # the probe: the caller's mistake says nothing about the replica
        await d.complete("m", REQ)
    assert breaker.state != HALF_OPEN and d.scheduler.available("m")
    assert (await d.complete("m", REQ)).text == "fine"
    assert breaker.state == CLOSED


class BreaksMidStream(Failing):
    """Fails its first call before any event, then fails the next one after its first event."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        if self.failures > 0:
            self.failures -= 1
            raise UpstreamError("upstream 503")
        yield StreamEvent(delta="half")
        raise UpstreamError("connection dropped")


async def test_stream_failing_after_a_retry_charges_its_replica_once() -> None:
    d = dispatcher(BreaksMidStream(failures=1), VirtualClock(), failures=5, retries=1, backoff_s=0.0)
    seen: list[str] = []
    with pytest.raises(UpstreamError, match="dropped"):
        async for event in d.stream("m", REQ):
            seen.append(event.delta)
    assert seen == ["half"] and d.scheduler.pool("m").replicas[0].breaker.consecutive == 1


# -- x-should-retry ------------------------------------------------------------------------------


async def test_5xx_after_retries_tells_the_client_not_to_retry() -> None:
    backend = Failing(failures=3)
    d = dispatcher(backend, VirtualClock(), failures=5, retries=2, backoff_s=0.0)
    with pytest.raises(UpstreamError) as caught:
        await d.complete("m", REQ)
    assert caught.value.headers == {"x-should-retry": "false"} and len(backend.calls) == 3


@pytest.mark.parametrize("error", [UpstreamError("boom"), UpstreamTimeout("slow"), limited(None)])
async def test_no_retries_configured_still_says_so(error: BackendError) -> None:
    d = dispatcher(Failing(error=error), VirtualClock(), failures=5)
    with pytest.raises(BackendError) as caught:
        await d.complete("m", REQ)
    assert caught.value.headers["x-should-retry"] == "false"


async def test_open_breaker_tells_the_client_not_to_retry() -> None:
    d = dispatcher(Failing(), VirtualClock(), failures=1)
    with pytest.raises(UpstreamError):
        await d.complete("m", REQ)
    with pytest.raises(Unavailable) as caught:
        await d.complete("m", REQ)
    assert caught.value.headers["x-should-retry"] == "false"


async def test_caller_mistake_carries_no_retry_advice() -> None:
    d = dispatcher(Failing(error=UpstreamRejected("bad", status=400)), VirtualClock(), retries=2)
    with pytest.raises(UpstreamRejected) as caught:
        await d.complete("m", REQ)
    assert "x-should-retry" not in caught.value.headers


@pytest.mark.parametrize("fail", [UpstreamError("model 'm': upstream returned 500: boom"), limited(0.0)])
async def test_openai_sdk_retries_do_not_multiply_upstream_calls(tmp_path: Path, fail: BackendError) -> None:
    config = parse_config(f'[store]\nurl = "sqlite:///{tmp_path / "t.db"}"\n\n'
                          '[models.m]\nbackend = "mock"\nretries = 1\nretry_backoff_s = 0.0\n')
    backend = MockBackend(name="m", fail=fail)
    gateway = Gateway(config=config, backends={"m": backend}, store=open_store(config.store.url),
                      dispatcher=build_dispatcher(config, {"m": backend}))
    await gateway.start()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gateway)))
    client = openai.AsyncOpenAI(api_key="k", base_url="http://w/v1", max_retries=2, http_client=http)
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    finally:
        await http.aclose()
        await gateway.stop()
    assert len(backend.calls) == 2  # wattwise's one retry; the SDK's two retries did not happen
    response = caught.value.response
    assert response.headers["x-should-retry"] == "false"
    if isinstance(fail, UpstreamRateLimited):
        assert response.status_code == 429 and caught.value.type == "rate_limit_error"
        assert response.headers["x-ratelimit-remaining-requests"] == "0"


# -- config --------------------------------------------------------------------------------------


def test_retry_after_cap_is_read_from_config(tmp_path: Path) -> None:
    config = parse_config('[models.m]\nbackend = "mock"\nretries = 2\nretry_after_cap_s = 7.5\n')
    d = build_dispatcher(config, build_backends(config))
    assert d.scheduler.policy("m").retry_after_cap_s == 7.5
    assert parse_config('[models.m]\nbackend = "mock"\n').models["m"].retry_after_cap_s == 10.0


# -- the connection pool -------------------------------------------------------------------------


async def test_waiting_for_a_pooled_connection_is_not_an_upstream_timeout() -> None:
    log = UpstreamLog()
    with serve_in_thread(upstream_app(log, reply_delay_s=0.4)) as base:
        transport = AiohttpTransport(max_connections=2, connect_timeout_s=0.2, timeout_s=10.0)
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
        try:
            replies = await asyncio.gather(*(
                transport.post(base + "/v1/chat/completions", body, headers={"content-type": "application/json"})
                for _ in range(6)))
        finally:
            await transport.aclose()
    assert [status for status, _, _ in replies] == [200] * 6 and len(log.bodies) == 6
