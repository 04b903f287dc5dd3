"""Access control over HTTP: keys, the master key, model permissions, rate limits, $ and J budgets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from tests.conftest import make_config

from wattwise.access.control import Access
from wattwise.access.principal import Principal
from wattwise.api.app import create_app
from wattwise.backends.mock import MockBackend
from wattwise.call import Decision
from wattwise.config import AuthConfig, BudgetsConfig, Config, TeamBudgetConfig
from wattwise.gateway import Gateway
from wattwise.request import ChatBody, chat_body
from wattwise.store.access import AccessStore
from wattwise.store.sql import open_store

pytestmark = pytest.mark.anyio

MASTER = "mk-test-master-key"
ADMIN = {"authorization": f"Bearer {MASTER}"}
MSG = [{"role": "user", "content": "hello there"}]


class Recording:
    """A router that records the options it was asked with (to see a key's defaults arrive)."""

    def __init__(self) -> None:
        self.bodies: list[ChatBody] = []

    def pick(self, *, prompt: str, policy: str, body: ChatBody, gateway: Gateway) -> Decision:
        self.bodies.append(body)
        return Decision(model="cheap", policy="test", reason="test")


@asynccontextmanager
async def stack(url: str, *, environ: dict[str, str] | None = None, delay_s: float = 0.0,
                edit: Callable[[Config], Config] | None = None, router: Recording | None = None
                ) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway, Access]]:
    store = open_store(url)
    config = make_config(url)
    if edit is not None:
        config = edit(config)
    backends = {"cheap": MockBackend(name="cheap", delay_s=delay_s), "dear": MockBackend(name="dear")}
    gateway = Gateway(config=config, backends=backends, store=store, router=router)  # type: ignore[arg-type]
    access = Access(config=config, store=store, meter=gateway.meter,
                    environ={"WATTWISE_MASTER_KEY": MASTER} if environ is None else environ)
    await gateway.start()
    await access.start()
    try:
        transport = httpx.ASGITransport(app=create_app(gateway, access=access))
        async with httpx.AsyncClient(transport=transport, base_url="http://wattwise") as client:
            yield client, gateway, access
    finally:
        await access.stop()
        await gateway.stop()


async def new_key(client: httpx.AsyncClient, **spec: Any) -> tuple[str, str]:
    made = await client.post("/v1/wattwise/keys", json={"name": "test", **spec}, headers=ADMIN)
    assert made.status_code == 201, made.text
    return made.json()["id"], made.json()["key"]


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def chat(client: httpx.AsyncClient, key: str | None, model: str = "cheap", **extra: Any) -> httpx.Response:
    return await client.post("/v1/chat/completions", json={"model": model, "messages": MSG, **extra},
                             headers=bearer(key) if key else {})


async def settled(access: Access) -> None:
    """Every settlement done, and its spend row in the store (the ledger writes off the request path)."""
    while access._settling:
        await asyncio.gather(*list(access._settling))
    await asyncio.to_thread(access.ledger.flush)


@pytest.fixture
def url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path}/access.db"


async def test_keys_are_required_once_configured_and_every_failure_looks_the_same(url: str) -> None:
    async with stack(url) as (client, gateway, _access):
        key_id, key = await new_key(client)
        assert key.startswith("ww-") and len(key) > 40
        ok = await chat(client, key)
        assert ok.status_code == 200
        assert (await client.post("/v1/chat/completions", json={"model": "cheap", "messages": MSG},
                                  headers={"x-api-key": key})).status_code == 200
        bodies = []
        for presented in (None, "ww-wrong", key[:-1] + ("A" if key[-1] != "A" else "B")):
            refused = await chat(client, presented)
            assert refused.status_code == 401
            bodies.append(refused.json())
        await client.delete(f"/v1/wattwise/keys/{key_id}", headers=ADMIN)
        revoked = await chat(client, key)
        assert revoked.status_code == 401
        bodies.append(revoked.json())
        assert all(b == bodies[0] for b in bodies) and bodies[0]["error"]["code"] == "invalid_api_key"
        # Open paths stay open; the store holds only the keyed hash.
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/v1/models")).status_code == 401
        rows = AccessStore(store=gateway.store).keys()
        assert key not in repr(rows) and rows[0].hash != key


async def test_expired_key_is_refused(url: str) -> None:
    async with stack(url) as (client, _, _access):
        _, key = await new_key(client, expires_at=1.0)
        assert (await chat(client, key)).status_code == 401


async def test_admin_api_is_master_key_only_and_audited(url: str) -> None:
    async with stack(url) as (client, _gateway, _access):
        key_id, key = await new_key(client, team="search", budget_usd="200/month", rpm=600, models=["auto", "cheap"])
        assert (await client.get("/v1/wattwise/keys")).status_code == 401
        denied = await client.get("/v1/wattwise/keys", headers=bearer(key))
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
        listed = (await client.get("/v1/wattwise/keys", headers=ADMIN)).json()["data"]
        assert [k["id"] for k in listed] == [key_id] and "key" not in listed[0] and "hash" not in listed[0]
        updated = await client.patch(f"/v1/wattwise/keys/{key_id}", json={"rpm": 1200, "team": None}, headers=ADMIN)
        assert updated.status_code == 200
        assert updated.json()["settings"]["rpm"] == 1200 and updated.json()["team"] is None
        assert updated.json()["settings"]["budgets"] == [{"unit": "usd", "limit": 200.0, "period": "month"}]
        shown = (await client.get(f"/v1/wattwise/keys/{key_id}", headers=ADMIN)).json()
        assert shown["spend"][0]["limit"] == 200.0 and shown["spend"][0]["resets_at"].endswith("Z")
        bad = await client.post("/v1/wattwise/keys", json={"name": "x", "rpm": -1}, headers=ADMIN)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "rpm"
        assert (await client.delete("/v1/wattwise/keys/key_nope", headers=ADMIN)).status_code == 404
        await client.delete(f"/v1/wattwise/keys/{key_id}", headers=ADMIN)
        actions = [row["action"] for row in (await client.get("/v1/wattwise/audit", headers=ADMIN)).json()["data"]]
        assert sorted(actions) == ["create", "revoke", "update"]


async def test_a_model_the_key_may_not_use_is_403_naming_it(url: str) -> None:
    async with stack(url) as (client, _, _access):
        _, key = await new_key(client, models=["auto", "cheap"])
        refused = await chat(client, key, model="dear")
        assert refused.status_code == 403 and "'dear'" in refused.json()["error"]["message"]
        assert refused.json()["error"]["param"] == "model"
        assert (await chat(client, key, model="auto:utility")).status_code == 200
        proxied = await client.post("/v1/embeddings", json={"model": "dear", "input": "x"}, headers=bearer(key))
        assert proxied.status_code == 403
        listed = (await client.get("/v1/models", headers=bearer(key))).json()["data"]
        assert [m["id"] for m in listed] == ["cheap", "auto"]
        assert (await client.get("/v1/models/dear", headers=bearer(key))).status_code == 404
        assert len((await client.get("/v1/models", headers=ADMIN)).json()["data"]) == 3


async def test_rate_limits_send_openai_headers_and_retry_after(url: str) -> None:
    async with stack(url) as (client, _, _access):
        _, key = await new_key(client, rpm=2, tpm=100_000, model_limits={"cheap": {"rpm": 5}})
        first = await chat(client, key, max_tokens=10)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-limit-tokens"] == "100000"
        assert int(first.headers["x-ratelimit-remaining-tokens"]) < 100_000
        assert first.headers["x-ratelimit-reset-requests"].endswith("s")
        assert (await chat(client, key, max_tokens=10)).status_code == 200
        third = await chat(client, key, max_tokens=10)
        assert third.status_code == 429
        assert third.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(third.headers["retry-after"]) <= 60
        assert third.headers["x-ratelimit-remaining-requests"] == "0"


async def test_tokens_per_minute_refuse_a_request_too_big_for_the_window(url: str) -> None:
    async with stack(url) as (client, _, _access):
        _, key = await new_key(client, tpm=50)
        refused = await chat(client, key, max_tokens=1000)
        assert refused.status_code == 429 and "tokens per minute" in refused.json()["error"]["message"]
        assert (await chat(client, key, max_tokens=20)).status_code == 200


@pytest.mark.parametrize("requests", [200])
async def test_concurrent_requests_never_overrun_a_budget(store_url: str, requests: int) -> None:
    async with stack(store_url, delay_s=0.02) as (client, gateway, access):
        probe = gateway.call(chat_body({"model": "cheap", "messages": MSG, "max_tokens": 50}), request_id="probe",
                             tag=None)
        bound, output = access._tokens(probe)
        probe.close()
        worst = access.worst("cheap", input_tokens=bound, output_tokens=output)
        assert worst.usd is not None and worst.usd > 0
        budget = worst.usd * 20.5  # room for 20 worst cases, not 21
        key_id, key = await new_key(client, budget_usd=f"{budget!r}/day")
        answers = await asyncio.gather(*[chat(client, key, max_tokens=50) for _ in range(requests)])
        await settled(access)
        ok = [a for a in answers if a.status_code == 200]
        refused = [a for a in answers if a.status_code == 429]
        assert len(ok) + len(refused) == requests and len(ok) >= 20
        error = refused[0].json()["error"]
        assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
        assert "budget" in error["message"] and "resets at" in error["message"]
        assert refused[0].headers["x-wattwise-budget-reset"].endswith("Z")
        spent_usd, _ = AccessStore(store=gateway.store).spent(key_id=key_id)
        assert 0 < spent_usd <= budget
        metered = sum(float(a.headers["x-wattwise-cost-usd"]) for a in ok)
        assert spent_usd == pytest.approx(metered)


async def test_spend_survives_a_restart_and_a_killed_request_counts_at_its_worst(store_url: str) -> None:
    async with stack(store_url) as (client, gateway, access):
        key_id, key = await new_key(client, budget_usd="1/total", budget_j="1000/month")
        assert (await chat(client, key, max_tokens=5)).status_code == 200
        await settled(access)
        usd, j = AccessStore(store=gateway.store).spent(key_id=key_id)
        assert usd > 0 and j > 0
        # A request in flight when the process was killed: its worst case, durable, never settled.
        AccessStore(store=gateway.store).reserve_spend(request_id="req_killed", key_id=key_id, team=None,
                                                       ts=1e9 * 2, usd=0.9999999, j=1.0)
    async with stack(store_url) as (client, gateway, access):  # a fresh process: empty shared state
        refused = await chat(client, key, max_tokens=5)
        assert refused.status_code == 429 and "$1 per total" in refused.json()["error"]["message"]
        assert "does not reset" in refused.json()["error"]["message"]
        shown = (await client.get(f"/v1/wattwise/keys/{key_id}", headers=ADMIN)).json()
        assert shown["spend"][0]["spent"] == pytest.approx(usd + 0.9999999)


async def test_unknown_energy_follows_the_policy_and_says_so(url: str) -> None:
    async with stack(url) as (client, _, _access):
        _, key = await new_key(client, budget_j="1e9/day")
        refused = await chat(client, key, model="dear")  # no energy profile
        assert refused.status_code == 429 and "energy is unknown" in refused.json()["error"]["message"]
        served = await chat(client, key, model="cheap")
        assert served.status_code == 200 and served.headers["x-wattwise-budget-unknown-energy"] == "refuse"

    def allow(config: Config) -> Config:
        return config.model_copy(update={"budgets": BudgetsConfig(unknown_energy="allow")})

    async with stack(url, edit=allow) as (client, _, _access):
        _, key = await new_key(client, budget_j="1e9/day")
        served = await chat(client, key, model="dear")
        assert served.status_code == 200 and served.headers["x-wattwise-budget-unknown-energy"] == "allow"


async def test_team_budgets_bind_every_key_of_the_team(url: str) -> None:
    def teams(config: Config) -> Config:
        return config.model_copy(update={"budgets": BudgetsConfig(teams={"search": TeamBudgetConfig(usd="0/day")})})

    async with stack(url, edit=teams) as (client, _, _access):
        _, key = await new_key(client, team="search", rpm=10)
        _, other = await new_key(client, team="ads")
        refused = await chat(client, key)
        assert refused.status_code == 429 and "team search budget" in refused.json()["error"]["message"]
        assert refused.headers["x-ratelimit-remaining-requests"] == "9"  # where the rate limits stand
        assert (await chat(client, other)).status_code == 200


async def test_key_settings_reach_the_request(url: str) -> None:
    router = Recording()
    async with stack(url, router=router) as (client, gateway, _access):
        key_id, key = await new_key(client, quality_target=0.8, max_cost_usd=0.5, tag="search", store_content=False)
        answer = await chat(client, key, model="auto")
        assert answer.status_code == 200
        assert router.bodies[-1].wattwise.quality_target == 0.8 and router.bodies[-1].wattwise.max_cost_usd == 0.5
        await chat(client, key, model="auto", wattwise={"quality_target": 0.2})
        assert router.bodies[-1].wattwise.quality_target == 0.2  # the request's own dial wins
        gateway.writer.flush()
        row = gateway.store.get(answer.headers["x-wattwise-request-id"])
        assert row is not None and row.tag == "search" and row.messages is None and row.key_id == key_id


async def test_master_key_is_not_governed_and_no_keys_means_open(url: str) -> None:
    async with stack(url, environ={}) as (client, _, access):
        assert not access.auth.required
        assert (await chat(client, None)).status_code == 200
        assert (await chat(client, "anything")).status_code == 200
        assert (await client.get("/v1/wattwise/keys")).status_code == 401
    async with stack(url) as (client, _, access):
        assert access.auth.required  # the master key alone turns authentication on
        assert (await chat(client, MASTER)).status_code == 200
        assert (await chat(client, None)).status_code == 401


async def test_modes_keys_and_none(url: str) -> None:
    def mode(name: str) -> Callable[[Config], Config]:
        return lambda config: config.model_copy(update={"auth": AuthConfig(mode=name)})  # type: ignore[arg-type]

    async with stack(url, environ={}, edit=mode("keys")) as (client, _, _access):
        assert (await chat(client, None)).status_code == 401
    async with stack(url, edit=mode("none")) as (client, _, _access):
        assert (await chat(client, None)).status_code == 200


async def test_principal_in_scope_state(url: str) -> None:
    seen: list[Any] = []
    async with stack(url) as (client, gateway, access):
        key_id, key = await new_key(client, team="search")
        inner = create_app(gateway, access=access)

        async def spy(scope: Any, receive: Any, send: Any) -> None:
            await inner(scope, receive, send)
            seen.append(scope["state"].get("principal"))

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=spy), base_url="http://w") as other:
            await other.post("/v1/chat/completions", json={"model": "cheap", "messages": MSG}, headers=bearer(key))
    assert isinstance(seen[0], Principal) and seen[0].key_id == key_id and seen[0].team == "search"


async def test_streams_and_proxied_calls_settle_to_their_metered_cost(url: str) -> None:
    async with stack(url) as (client, gateway, access):
        key_id, key = await new_key(client, budget_usd="5/day", budget_j="1e6/day")
        streamed = await client.post("/v1/chat/completions", headers=bearer(key), json={
            "model": "cheap", "messages": MSG, "stream": True, "max_tokens": 20,
            "stream_options": {"include_usage": True}})
        assert streamed.status_code == 200
        assert streamed.headers["x-wattwise-budget-unknown-energy"] == "refuse"
        chunks = [json.loads(line[6:]) for line in streamed.text.splitlines()
                  if line.startswith("data: {")]
        metered = [c["wattwise"]["cost_usd"] for c in chunks if "wattwise" in c][-1]
        assert metered > 0
        await settled(access)
        usd, j = AccessStore(store=gateway.store).spent(key_id=key_id)
        assert usd == pytest.approx(metered) and j > 0
        refused = await client.post("/v1/chat/completions", headers=bearer(key), json={
            "model": "dear", "messages": MSG, "stream": True})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
        gateway.writer.flush()
        row = gateway.store.get(refused.headers["x-wattwise-request-id"])
        assert row is not None and row.http_status == 429 and row.key_id == key_id


async def test_batch_lines_run_on_their_keys_budget(url: str) -> None:
    async with stack(url) as (client, gateway, access):
        probe = gateway.call(chat_body({"model": "cheap", "messages": MSG, "max_tokens": 50}), request_id="probe2",
                             tag=None)
        bound, output = access._tokens(probe)
        probe.close()
        worst = access.worst("cheap", input_tokens=bound, output_tokens=output)
        assert worst.usd is not None
        budget = worst.usd * 2.5  # room for two lines' worst cases
        key_id, key = await new_key(client, budget_usd=f"{budget!r}/day", rpm=1)
        lines = b"".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                                     "body": {"model": "cheap", "messages": MSG, "max_tokens": 50}}).encode() + b"\n"
                         for i in range(40))
        up = await client.post("/v1/files", files={"file": ("in.jsonl", lines)}, data={"purpose": "batch"},
                               headers=bearer(key))
        made = await client.post("/v1/batches", json={"input_file_id": up.json()["id"], "completion_window": "24h",
                                                      "endpoint": "/v1/chat/completions"}, headers=bearer(key))
        assert made.status_code == 200, made.text
        app = client._transport.app  # type: ignore[attr-defined]
        while not hasattr(app, "state"):  # through the middleware layers to the Starlette app
            app = app.app
        runner = app.state.batch_runner
        for _ in range(200):  # the lifespan is not run in-process: drive the runner by hand
            await runner.tick()
            if runner.running:
                await asyncio.gather(*runner.running.values())
            elif not runner.queue.counts(made.json()["id"]).get("pending"):
                break
        await settled(access)
        gateway.writer.flush()
        rows = [r for r in gateway.store.fetch() if (r.tag or "").startswith("batch:")]
        assert len(rows) == 40
        ok = [r for r in rows if r.status == "ok"]
        refused = [r for r in rows if r.http_status == 429]
        # Budgets bind batch lines (settled at their metered cost, so more than two fit); the key's
        # per-minute limit (1) does not (batch work waits for headroom instead).
        assert len(ok) >= 2 and refused and len(ok) + len(refused) == 40
        assert all("budget" in (r.error or "") for r in refused)
        spent_usd, _ = AccessStore(store=gateway.store).spent(key_id=key_id)
        assert 0 < spent_usd <= budget
