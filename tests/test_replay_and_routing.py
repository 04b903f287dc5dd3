"""Replay backend on the shipped RouterBench outcomes, and `auto` routing through the gateway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from wattwise.api.app import create_app
from wattwise.build import build_gateway
from wattwise.config import Config, ModelConfig, PriceConfig, StoreConfig
from wattwise.data import shipped_path
from wattwise.gateway import Gateway
from wattwise.outcomes import load_outcomes
from wattwise.routing import policies

pytestmark = pytest.mark.anyio
OUTCOMES = "builtin:outcomes/routerbench_zs.test.jsonl.gz"
CHEAP, DEAR = "mistralai/mistral-7b-chat", "gpt-4-1106-preview"


@pytest.fixture(scope="module")
def rows():  # type: ignore[no-untyped-def]
    return load_outcomes(shipped_path("outcomes/routerbench_zs.test.jsonl.gz"))


@pytest.fixture
async def replay(tmp_path) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:  # type: ignore[no-untyped-def]
    config = Config(store=StoreConfig(url=f"sqlite:///{tmp_path}/t.db", flush_interval_s=0.01), models={
        "small": ModelConfig(backend="replay", outcomes=OUTCOMES, source_model=CHEAP, trained_as=CHEAP,
                             price=PriceConfig(input=0.2, output=0.2)),
        "big": ModelConfig(backend="replay", outcomes=OUTCOMES, source_model=DEAR, trained_as=DEAR,
                           price=PriceConfig(input=10.0, output=30.0)),
        "stranger": ModelConfig(backend="mock", price=PriceConfig(input=1.0, output=1.0)),
    })
    gateway = build_gateway(config)
    await gateway.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://w") as c:
        yield c, gateway
    await gateway.stop()


def ask(prompt: str, model: str, **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


async def test_replay_returns_recorded_answer_cost_and_score(replay, rows) -> None:  # type: ignore[no-untyped-def]
    client, gateway = replay
    row = next(r for r in rows if r.model == DEAR)
    response = await client.post("/v1/chat/completions", json=ask(row.prompt, "big"))
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == row.response
    assert float(response.headers["x-wattwise-cost-usd"]) == pytest.approx(row.cost_usd)
    gateway.writer.flush()
    [trace] = gateway.store.fetch()
    assert trace.cost_source == "recorded" and trace.score == row.score
    assert trace.input_tokens == -(-len(row.prompt) // 4)  # the file has no counts: 4 chars a token


async def test_replay_unknown_prompt_is_404(replay) -> None:  # type: ignore[no-untyped-def]
    client, _ = replay
    response = await client.post("/v1/chat/completions", json=ask("never recorded", "big"))
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_prompt"


async def test_auto_routes_with_shipped_router_and_dial(replay, rows) -> None:  # type: ignore[no-untyped-def]
    client, gateway = replay
    prompts = list(dict.fromkeys(r.prompt for r in rows))[:40]
    chosen_low, chosen_high = [], []
    for prompt in prompts:
        low = await client.post("/v1/chat/completions", json=ask(prompt, "auto", wattwise={"max_cost_usd": 1e-6}))
        high = await client.post("/v1/chat/completions", json=ask(prompt, "auto:utility",
                                                                   wattwise={"quality_target": 1.0}))
        assert low.status_code == high.status_code == 200
        assert "utility" in low.headers["x-wattwise-route"]
        # "stranger" has no training data: the reason says its price-class prior was used.
        assert "no training data for stranger: price-class prior" in high.headers["x-wattwise-route"]
        chosen_low.append(low.headers["x-wattwise-model"])
        chosen_high.append(high.headers["x-wattwise-model"])
    # A tight budget keeps traffic off the dear model; a full quality target sends it there.
    assert chosen_low.count("big") < chosen_high.count("big")
    gateway.writer.flush()
    traces = [t for t in gateway.store.fetch() if t.requested_model.startswith("auto")]
    assert len(traces) == 80 and all(t.route_reason and t.route_policy for t in traces)


async def test_unknown_policy_is_400_naming_model(replay) -> None:  # type: ignore[no-untyped-def]
    client, _ = replay
    response = await client.post("/v1/chat/completions", json=ask("hi", "auto:astrology"))
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"


async def test_cascade_pays_for_every_call(replay, rows, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client, gateway = replay
    prompts = list(dict.fromkeys(r.prompt for r in rows if r.task == "arc-challenge"))[:30]
    multi = 0
    # Every check is made here (whether a check pays its way is tested in test_routing_router.py):
    # this test is about metering each call of a multi-call answer.
    monkeypatch.setattr(policies, "check_pays", lambda *args, **kwargs: True)
    for prompt in prompts:
        response = await client.post("/v1/chat/completions", json=ask(prompt, "auto:cascade"))
        assert response.status_code == 200, response.text
    gateway.writer.flush()
    for trace in gateway.store.fetch():
        calls = json.loads(trace.calls or "[]")
        assert calls, "a cascade lists its calls"
        known = [c["cost_usd"] for c in calls]
        assert trace.cost_usd == pytest.approx(sum(known))
        assert trace.model == calls[-1]["model"] or any(c["model"] == trace.model for c in calls)
        multi += len(calls) > 1
    assert multi >= 1, "some prompt was checked or escalated"
