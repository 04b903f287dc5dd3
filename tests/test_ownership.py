"""Ownership and privacy: unguessable request ids, cross-origin refusal, keyed prompt hashes, and
batches, files and feedback visible only to the key that made them."""

from __future__ import annotations

import itertools

import httpx
import pytest
from tests.conftest import make_config

from wattwise.api.app import create_app
from wattwise.api.middleware import id_factory
from wattwise.backends.mock import MockBackend
from wattwise.gateway import Gateway
from wattwise.store.sql import TraceStore

pytestmark = pytest.mark.anyio
MSG = [{"role": "user", "content": "say hello to the gateway"}]


def test_request_ids_carry_128_random_bits() -> None:
    new_id = id_factory()
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("req_") and len(i) == 36 for i in ids)
    int(ids[0][4:], 16)  # hex
    # Two consecutive ids share no prefix beyond chance: nothing to count forward from.
    shared = [len(_common_prefix(a, b)) - 4 for a, b in itertools.pairwise(ids)]
    assert max(shared) < 8 and sum(shared) / len(shared) < 0.2
    other = id_factory()
    assert other()[:12] != new_id()[:12]


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _gateway(store: TraceStore, **server: object) -> Gateway:
    config = make_config(store.url)
    if server:
        config = config.model_copy(update={"server": config.server.model_copy(update=server)})
    return Gateway(config=config, backends={"cheap": MockBackend(name="cheap"), "dear": MockBackend(name="dear")},
                   store=store)


async def test_cross_origin_refused_without_allowed_origins(store: TraceStore) -> None:
    gateway = _gateway(store)
    await gateway.start()
    try:
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://wattwise") as client:
            plain = await client.post("/v1/chat/completions", json={"model": "cheap", "messages": MSG})
            assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers
            foreign = await client.post("/v1/chat/completions", json={"model": "cheap", "messages": MSG},
                                        headers={"origin": "https://evil.example"})
            assert foreign.status_code == 403
            assert foreign.json()["error"]["code"] == "origin_not_allowed"
            assert foreign.headers["x-wattwise-request-id"].startswith("req_")
            upload = await client.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "batch"},
                                       headers={"origin": "null"})
            assert upload.status_code == 403
        gateway.writer.flush()
        assert store.count() == 1  # the refused request never reached the gateway
    finally:
        await gateway.stop()


async def test_allowed_origin_gets_cors_and_preflight(store: TraceStore) -> None:
    gateway = _gateway(store, allowed_origins=["https://app.example"])
    await gateway.start()
    try:
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://wattwise") as client:
            pre = await client.options("/v1/chat/completions", headers={
                "origin": "https://app.example", "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type"})
            assert pre.status_code == 204
            assert pre.headers["access-control-allow-origin"] == "https://app.example"
            assert "POST" in pre.headers["access-control-allow-methods"]
            assert pre.headers["access-control-allow-headers"] == "authorization, content-type"
            ok = await client.post("/v1/chat/completions", json={"model": "cheap", "messages": MSG},
                                   headers={"origin": "https://app.example"})
            assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
            other = await client.options("/v1/chat/completions", headers={
                "origin": "https://other.example", "access-control-request-method": "POST"})
            assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
            form = await client.post("/v1/wattwise/feedback", content=b"request_id=x&score=1",
                                     headers={"origin": "https://app.example",
                                              "content-type": "application/x-www-form-urlencoded"})
            assert form.status_code == 415  # JSON endpoints take JSON only: no "simple" form post
    finally:
        await gateway.stop()


async def test_prompt_hash_is_keyed(store: TraceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import hmac

    monkeypatch.setenv("WATTWISE_HASH_KEY", "s3cret")
    gateway = _gateway(store)
    await gateway.start()
    try:
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://wattwise") as client:
            response = await client.post("/v1/chat/completions", json={"model": "cheap", "messages": MSG})
        gateway.writer.flush()
        row = store.get(response.headers["x-wattwise-request-id"])
        assert row is not None and row.prompt_hash is not None
        prompt = gateway.backend_request(_body()).prompt_text()
        assert row.prompt_hash == hmac.new(b"s3cret", prompt.encode(), hashlib.sha256).hexdigest()[:32]
        assert row.prompt_hash != hashlib.sha256(prompt.encode()).hexdigest()[:32]
        assert row.key_id is None and row.team is None  # no keys configured
    finally:
        await gateway.stop()


def _body():  # type: ignore[no-untyped-def]
    from wattwise.request import chat_body

    return chat_body({"model": "cheap", "messages": MSG})
