"""Active health checks: a replica whose probe fails is skipped until it answers again."""

from __future__ import annotations

import pytest

from wattwise.backends.base import ChatRequest
from wattwise.backends.mock import MockBackend
from wattwise.backends.openai_http import OpenAIHTTPBackend
from wattwise.backends.transport import MockRequest, MockTransport
from wattwise.scheduling.dispatch import Dispatcher
from wattwise.scheduling.health import HealthChecker
from wattwise.scheduling.scheduler import ModelPolicy

pytestmark = pytest.mark.anyio
REQ = ChatRequest(messages=[{"role": "user", "content": "hi"}])


class Probed(MockBackend):
    def __init__(self, *, name: str, up: bool) -> None:
        super().__init__(name=name, reply=name)
        self.up = up

    async def health(self) -> bool:
        return self.up


async def test_down_replica_is_skipped_until_it_recovers() -> None:
    a, b = Probed(name="a", up=False), Probed(name="b", up=True)
    dispatcher = Dispatcher.from_replicas({"m": [(a, 1.0), (b, 1.0)]}, policies={"m": ModelPolicy()}, breakers={})
    checker = HealthChecker(scheduler=dispatcher.scheduler, interval_s=60)
    await checker.probe_all()
    answers = {(await dispatcher.complete("m", REQ)).text for _ in range(6)}
    assert answers == {"b"}
    a.up = True
    await checker.probe_all()
    answers = {(await dispatcher.complete("m", REQ)).text for _ in range(6)}
    assert "a" in answers  # back in rotation (ties go to the lower index)


async def test_openai_http_probe_reads_models_endpoint() -> None:
    statuses = iter([200, 503])
    seen: list[str] = []

    def handler(request: MockRequest) -> tuple[int, bytes]:
        seen.append(request.url)
        return next(statuses), b"{}"

    backend = OpenAIHTTPBackend(name="up", base_url="http://x/v1", upstream_model="m",
                                transport=MockTransport(handler))
    assert await backend.health() is True
    assert await backend.health() is False
    assert seen == ["http://x/v1/models"] * 2
    assert await MockBackend(name="plain").health() is None
