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


class _AsKey:
    """Stands in for access control in these tests: the ``x-test-key`` header names the principal."""

    def __init__(self, app: object) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        key = dict(scope.get("headers", [])).get(b"x-test-key")
        if scope["type"] == "http" and key:
            scope.setdefault("state", {})["principal"] = _Principal(key.decode())
        await self.app(scope, receive, send)  # type: ignore[operator]


class _Principal:
    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        self.team = None


def _batch_line(custom_id: str) -> bytes:
    import json

    body = {"model": "cheap", "messages": [{"role": "user", "content": custom_id}]}
    return (json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                        "body": body}) + "\n").encode()


async def test_files_batches_and_feedback_belong_to_their_key(store: TraceStore) -> None:
    from wattwise.store.records import TraceRecord

    gateway = _gateway(store)
    await gateway.start()
    try:
        transport = httpx.ASGITransport(app=_AsKey(create_app(gateway)))
        async with httpx.AsyncClient(transport=transport, base_url="http://wattwise") as client:
            a, b = {"x-test-key": "key_a"}, {"x-test-key": "key_b"}
            up = await client.post("/v1/files", files={"file": ("in.jsonl", _batch_line("x"))},
                                   data={"purpose": "batch"}, headers=a)
            assert up.status_code == 200
            file_id = up.json()["id"]
            made = await client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                                          "completion_window": "24h"}, headers=a)
            assert made.status_code == 200
            batch_id = made.json()["id"]
            # Another key: every route answers as if the file and batch did not exist.
            for method, path, kw in [
                ("GET", f"/v1/files/{file_id}", {}), ("GET", f"/v1/files/{file_id}/content", {}),
                ("DELETE", f"/v1/files/{file_id}", {}), ("GET", f"/v1/batches/{batch_id}", {}),
                ("POST", f"/v1/batches/{batch_id}/cancel", {}),
                ("POST", "/v1/batches", {"json": {"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                                  "completion_window": "24h"}}),
            ]:
                response = await client.request(method, path, headers=b, **kw)
                assert response.status_code == 404, (method, path, response.text)
                assert response.json()["error"]["code"] == "not_found"
            assert (await client.get("/v1/files", headers=b)).json()["data"] == []
            assert (await client.get("/v1/batches", headers=b)).json()["data"] == []
            # The owner sees them; so does a gateway without keys (no principal), as before.
            assert [f["id"] for f in (await client.get("/v1/files", headers=a)).json()["data"]] == [file_id]
            assert [x["id"] for x in (await client.get("/v1/batches", headers=a)).json()["data"]] == [batch_id]
            assert (await client.get(f"/v1/files/{file_id}/content", headers=a)).content == _batch_line("x")
            assert (await client.get(f"/v1/batches/{batch_id}")).status_code == 200
            assert (await client.post(f"/v1/batches/{batch_id}/cancel", headers=a)).status_code == 200
            assert (await client.delete(f"/v1/files/{file_id}", headers=a)).status_code == 200

            store.insert([TraceRecord(id="req_of_a", ts=1.0, requested_model="cheap", key_id="key_a")])
            stolen = await client.post("/v1/wattwise/feedback", json={"request_id": "req_of_a", "score": 0.0},
                                       headers=b)
            assert stolen.status_code == 404
            assert store.get("req_of_a").score is None  # type: ignore[union-attr]
            own = await client.post("/v1/wattwise/feedback", json={"request_id": "req_of_a", "score": 0.9},
                                    headers=a)
            assert own.status_code == 200
            assert store.get("req_of_a").score == pytest.approx(0.9)  # type: ignore[union-attr]
    finally:
        await gateway.stop()


def test_store_content_false_drops_batch_requests_and_answers(store: TraceStore) -> None:
    import time

    from wattwise.store.batch import BatchStore, NewLine

    queue = BatchStore(store=store, keep_content=False)
    now = time.time()
    upload = queue.add_file(purpose="batch", filename="in.jsonl", content=b"{}", now=now, key_id="key_a")
    batch = queue.add_batch(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
                            metadata=None, now=now, key_id="key_a",
                            lines=[NewLine(line_no=i, custom_id=f"c{i}", body='{"secret": "prompt"}', model="cheap")
                                   for i in range(2)])
    first, second = queue.claim(owner="o", limit=2, lease_s=30, now=now)
    assert queue.finish(first, owner="o", state="done", request_id="r1", response={"answer": "secret"}, now=now)

    def lines() -> list[tuple[object, ...]]:
        cur = store.conn.cursor()
        cur.execute("SELECT line_no, body, response FROM batch_lines ORDER BY line_no")
        return [tuple(r) for r in cur.fetchall()]

    assert lines()[0][1] is None  # the request went with the line's finish
    assert queue.finish(second, owner="o", state="done", request_id="r2", response={"answer": "two"}, now=now)
    assert queue.finalize_ready(now=now) == [batch.id]
    assert lines() == [(0, None, None), (1, None, None)]
    done = queue.get_batch(batch.id, key_id="key_a")
    assert done is not None and done.key_id == "key_a" and done.output_file_id is not None
    output = queue.get_file(done.output_file_id, key_id="key_a")
    assert output is not None and output.key_id == "key_a"  # results belong to the batch's key
    assert queue.get_file(done.output_file_id, key_id="key_b") is None
    assert b'"secret"' in (queue.file_content(done.output_file_id) or b"")  # the client's to download


def test_report_by_key_and_team(tmp_path: object) -> None:
    import json

    from click.testing import CliRunner

    from wattwise.cli import main
    from wattwise.store.records import TraceRecord
    from wattwise.store.sql import opened

    url = f"sqlite:///{tmp_path}/t.db"
    rows = [TraceRecord(id=f"r{i}", ts=1e9 + i, requested_model="m", model="m", key_id=key, team=team,
                        cost_usd=cost, energy_j=1.0, energy_source="estimated", input_tokens=10, output_tokens=5)
            for i, (key, team, cost) in enumerate([("key_a", "search", 0.25), ("key_a", "search", 0.5),
                                                   ("key_b", "search", 1.0), ("key_c", None, 2.0),
                                                   (None, None, 4.0)])]
    with opened(url) as store:
        store.insert(rows)
    by_key = json.loads(CliRunner().invoke(main, ["report", "--store", url, "--by", "key", "--json"]).output)
    lines = {line["group"]: line for line in by_key["lines"]}
    assert {g: (x["requests"], x["cost_usd"]) for g, x in lines.items()} == {
        "key_a": (2, 0.75), "key_b": (1, 1.0), "key_c": (1, 2.0), "(no key)": (1, 4.0), "TOTAL": (5, 7.75)}
    assert lines["key_a"]["energy_j"] == 2.0
    by_team = json.loads(CliRunner().invoke(main, ["report", "--store", url, "--by", "team", "--json"]).output)
    teams = {line["group"]: line["cost_usd"] for line in by_team["lines"]}
    assert teams == {"search": 1.75, "(no team)": 6.0, "TOTAL": 7.75}
    table = CliRunner().invoke(main, ["report", "--store", url, "--by", "team"])
    assert table.exit_code == 0 and "search" in table.output


def test_metrics_per_key_and_team_are_bounded() -> None:
    from wattwise.metrics import Metrics

    metrics = Metrics(max_key_series=2, max_team_series=1)
    for key, team, cost in [("key_a", "search", 0.5), ("key_b", "ads", 1.0), ("key_c", "ads", 2.0),
                            ("key_a", "search", 0.25), ("key_d", None, 4.0)]:
        metrics.observe_key(key=key, team=team, status="ok", cost=cost, energy_j=1.0)
    text = metrics.render().decode()
    assert 'wattwise_key_cost_usd_total{key="key_a",team="search"} 0.75' in text
    assert 'wattwise_key_cost_usd_total{key="key_b",team="other"} 1.0' in text
    assert 'wattwise_key_cost_usd_total{key="other",team="other"} 2.0' in text
    assert 'wattwise_key_cost_usd_total{key="other",team="none"} 4.0' in text
    assert 'wattwise_key_requests_total{key="key_a",status="ok",team="search"} 2.0' in text
    assert 'wattwise_key_energy_joules_total{key="key_a",team="search"} 2.0' in text
    series = [line for line in text.splitlines() if line.startswith("wattwise_key_cost_usd_total")]
    assert len(series) == 4


async def test_metrics_endpoint_counts_by_key(store: TraceStore) -> None:
    gateway = _gateway(store)
    await gateway.start()
    try:
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://wattwise") as client:
            from wattwise.request import chat_body

            call = gateway.call(chat_body({"model": "cheap", "messages": MSG}), request_id="req_k", tag=None)
            call.principal = _Principal("key_a")
            call.principal.team = "search"
            async with call:
                await call.complete()
            text = (await client.get("/metrics")).text
        assert 'wattwise_key_requests_total{key="key_a",status="ok",team="search"} 1.0' in text
        assert 'wattwise_key_cost_usd_total{key="key_a",team="search"} 1.5e-06' in text
        gateway.writer.flush()
        row = store.get("req_k")
        assert row is not None and (row.key_id, row.team) == ("key_a", "search")
    finally:
        await gateway.stop()


async def test_ownership_with_real_keys(store: TraceStore) -> None:
    import time

    from wattwise.access.admin import create_key
    from wattwise.access.control import Access
    from wattwise.store.access import AccessStore

    master = "ww-test-master"
    keys = AccessStore(store=store)
    rec_a, key_a = create_key(keys, {"name": "a", "team": "search"}, secret=master.encode(), actor="t", now=time.time())
    _, key_b = create_key(keys, {"name": "b"}, secret=master.encode(), actor="t", now=time.time())
    gateway = _gateway(store)
    access = Access(config=gateway.config, store=store, meter=gateway.meter, environ={"WATTWISE_MASTER_KEY": master})
    await gateway.start()
    await access.start()
    try:
        transport = httpx.ASGITransport(app=create_app(gateway, access=access))
        async with httpx.AsyncClient(transport=transport, base_url="http://wattwise") as client:
            a, b = {"authorization": f"Bearer {key_a}"}, {"authorization": f"Bearer {key_b}"}
            chat = await client.post("/v1/chat/completions", json={"model": "cheap", "messages": MSG}, headers=a)
            assert chat.status_code == 200
            request_id = chat.headers["x-wattwise-request-id"]
            up = await client.post("/v1/files", files={"file": ("in.jsonl", _batch_line("x"))},
                                   data={"purpose": "batch"}, headers=a)
            file_id = up.json()["id"]
            assert (await client.get(f"/v1/files/{file_id}", headers=b)).status_code == 404
            assert (await client.get(f"/v1/files/{file_id}", headers=a)).status_code == 200
            master_view = await client.get(f"/v1/files/{file_id}", headers={"authorization": f"Bearer {master}"})
            assert master_view.status_code == 200  # the master key administers everything
            theirs = await client.post("/v1/wattwise/feedback", json={"request_id": request_id, "score": 0.0},
                                       headers=b)
            assert theirs.status_code == 404
            mine = await client.post("/v1/wattwise/feedback", json={"request_id": request_id, "score": 1.0},
                                     headers=a)
            assert mine.status_code == 200
            text = (await client.get("/metrics")).text
        assert f'wattwise_key_requests_total{{key="{rec_a.id}",status="ok",team="search"}} 1.0' in text
        gateway.writer.flush()
        row = store.get(request_id)
        assert row is not None and (row.key_id, row.team, row.score) == (rec_a.id, "search", 1.0)
    finally:
        await access.stop()
        await gateway.stop()


def test_prompt_hash_key_falls_back_to_the_master_key(store: TraceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart (a new gateway) keys prompt hashes the same when only the master key is set."""
    monkeypatch.delenv("WATTWISE_HASH_KEY", raising=False)
    monkeypatch.setenv("WATTWISE_MASTER_KEY", "master-secret")
    first, second = _gateway(store), _gateway(store)
    assert first.recorder.hash_key == second.recorder.hash_key == b"master-secret"
    monkeypatch.setenv("WATTWISE_HASH_KEY", "hash-secret")
    assert _gateway(store).recorder.hash_key == b"hash-secret"
