"""``/v1/files`` on SQLite and PostgreSQL: list, delete, streamed uploads with bounded memory, the
multipart parser, hostile ids and fields (always an OpenAI error body, never a 500), and retention."""

from __future__ import annotations

import asyncio
import io
import random
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import openai
import pytest
from tests.conftest import make_config
from tests.test_batch_api import client_for, jsonl, line, read_jsonl, wait_status

from wattwise.api.app import completion_body, create_app
from wattwise.api.multipart import MultipartParser, PartData, PartEnd, PartStart
from wattwise.backends.mock import MockBackend
from wattwise.batch import BatchRunner
from wattwise.config import BatchConfig, Config, FilesConfig
from wattwise.exceptions import InvalidRequest
from wattwise.gateway import Gateway
from wattwise.inprocess import serve_in_thread
from wattwise.store.batch import CHUNK_BYTES, BatchStore, NewLine
from wattwise.store.sql import TraceStore, open_store

FAST = BatchConfig(poll_interval_s=0.05, lease_s=5.0, max_concurrency=4)
BOUNDARY = "wattwise-test-boundary"


def config_for(store_url: str, **update: Any) -> Config:
    return make_config(store_url).model_copy(update={"batch": FAST, **update})


def gateway_for(store_url: str, **update: Any) -> Gateway:
    backends = {"cheap": MockBackend(name="cheap", reply=None)}
    return Gateway(config=config_for(store_url, **update), backends=backends,  # type: ignore[arg-type]
                   store=open_store(store_url))


@pytest.fixture
def served(store_url: str) -> Iterator[tuple[openai.OpenAI, str]]:
    with serve_in_thread(create_app(gateway_for(store_url))) as base, client_for(base) as client:
        yield client, base


def form(*parts: tuple[str, bytes, str | None], boundary: str = BOUNDARY) -> bytes:
    """A multipart body from ``(name, data, filename)`` parts."""
    out = b""
    for name, data, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def post_form(base: str, body: bytes) -> httpx.Response:
    return httpx.post(base + "/v1/files", content=body,
                      headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# -- list and delete through the official client ---------------------------------------------------


def test_list_pages_filters_and_orders_files(served: tuple[openai.OpenAI, str]) -> None:
    client, _ = served
    ids = []
    for i in range(5):
        ids.append(client.files.create(file=(f"f{i}.jsonl", jsonl([line("a", "hi")])), purpose="batch").id)
        time.sleep(0.002)  # distinct created_at is not required, but makes the order plain to read
    listed = client.files.list()
    assert [f.id for f in listed.data] == ids[::-1] and listed.has_more is False
    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == [ids[4], ids[3]] and page.has_more is True
    assert [f.id for f in client.files.list(limit=2, order="asc")] == ids  # the client follows `after`
    assert [f.id for f in client.files.list(limit=2, after=ids[2]).data] == [ids[1], ids[0]]
    assert [f.id for f in client.files.list(purpose="batch_output").data] == []
    raw = httpx.get(str(client.base_url) + "files", params={"limit": 1}).json()
    assert set(raw) == {"object", "data", "has_more", "first_id", "last_id"} and raw["object"] == "list"
    assert raw["first_id"] == raw["last_id"] == ids[-1] and raw["has_more"] is True


def test_delete_removes_the_file_and_a_running_batch_keeps_going(store_url: str) -> None:
    gateway = gateway_for(store_url)
    gateway.backends["cheap"] = MockBackend(name="cheap", reply=None, delay_s=0.05)
    with serve_in_thread(create_app(gateway)) as base, client_for(base) as client:
        upload = client.files.create(file=("in.jsonl", jsonl([line(f"c{i}", "hi") for i in range(8)])),
                                     purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        deleted = client.files.delete(upload.id)
        assert (deleted.id, deleted.object, deleted.deleted) == (upload.id, "file", True)
        with pytest.raises(openai.NotFoundError) as info:
            client.files.retrieve(upload.id)
        assert info.value.body["param"] == "file_id"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            client.files.delete(upload.id)
        with pytest.raises(openai.NotFoundError):
            client.files.content(upload.id)
        assert upload.id not in [f.id for f in client.files.list()]
        # The batch's lines were queued when it was created, so it does not need its input file.
        done = wait_status(client, batch.id, {"completed"})
        assert len(read_jsonl(client, done.output_file_id)) == 8
        assert [f.id for f in client.files.list(purpose="batch_output")] == [done.output_file_id]
        client.files.delete(done.output_file_id or "")
        with pytest.raises(openai.NotFoundError):
            client.files.content(done.output_file_id or "")
        assert client.batches.retrieve(batch.id).status == "completed"


# -- streamed uploads --------------------------------------------------------------------------------


def test_a_multi_chunk_upload_round_trips_byte_for_byte(served: tuple[openai.OpenAI, str]) -> None:
    client, _ = served
    rng = random.Random(7)
    # Several store chunks, with data that looks like the start of a boundary and lone CRs.
    data = b"".join(bytes(rng.getrandbits(8) for _ in range(4096)) + b"\r\n--" + BOUNDARY[:10].encode()
                    for _ in range(3 * CHUNK_BYTES // 4096))
    upload = client.files.create(file=("blob.bin", io.BytesIO(data)), purpose="batch")
    assert upload.bytes == len(data) > 2 * CHUNK_BYTES
    assert client.files.content(upload.id).content == data


def test_parser_events_do_not_depend_on_how_the_body_is_split() -> None:
    payload = b"x\r\n-\r\n--wattwise-test-boundar\r\ny" * 50
    body = form(("purpose", b"batch", None), ("file", payload, "a.jsonl"))
    expected = [PartStart(name="purpose", filename=None), "batch", PartEnd(),
                PartStart(name="file", filename="a.jsonl"), payload, PartEnd()]
    rng = random.Random(1)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, 40)))
        parser = MultipartParser(BOUNDARY.encode())
        events = [e for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) for e in parser.feed(body[a:b])]
        parser.close()
        merged: list[Any] = []
        for event in events:
            if isinstance(event, PartData) and merged and isinstance(merged[-1], bytes):
                merged[-1] += event.data
            else:
                merged.append(bytes(event.data) if isinstance(event, PartData) else event)
        assert merged == [x.encode() if isinstance(x, str) else x for x in expected]
    with pytest.raises(InvalidRequest):
        truncated = MultipartParser(BOUNDARY.encode())
        truncated.feed(body[:-10])
        truncated.close()


@pytest.mark.anyio
async def test_upload_memory_stays_flat_whatever_the_file_size(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Before, an upload peaked at about 4x its size (bench/upload_memory.py); now at a few chunks."""
    gateway = gateway_for(f"sqlite:///{tmp_path}/m.db")
    app = create_app(gateway)
    size = 20 * CHUNK_BYTES
    head = form(("purpose", b"batch", None)).removesuffix(f"--{BOUNDARY}--\r\n".encode())
    head += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'.encode()

    async def body() -> AsyncIterator[bytes]:
        yield head
        for _ in range(size // 65536):
            yield b"y" * 65535 + b"\n"
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://w") as client:
        tracemalloc.start()
        try:
            response = await client.post("/v1/files", content=body(),
                                         headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert response.status_code == 200 and response.json()["bytes"] == size
    assert peak < 6 * CHUNK_BYTES, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB upload"
    stored = BatchStore(store=gateway.store).file_chunks(response.json()["id"])
    assert stored is not None and sum(len(c) for c in stored) == size


# -- hostile multipart and ids: OpenAI's error body, never a 500 -------------------------------------


def test_multipart_mistakes_are_400s_naming_the_field(served: tuple[openai.OpenAI, str]) -> None:
    _, base = served
    file_part = ("file", b"{}\n", "x.jsonl")
    assert error_of(post_form(base, form(("purpose", b"\xff\xfebatch", None), file_part)), 400)["param"] == "purpose"
    missing = error_of(post_form(base, form(file_part)), 400)
    assert missing["param"] == "purpose" and missing["code"] == "missing_required_parameter"
    assert error_of(post_form(base, form(("purpose", b"batch", None))), 400)["param"] == "file"
    assert error_of(post_form(base, form(("purpose", b"batch", None), file_part, ("colour", b"red", None))),
                    400)["param"] == "colour"
    assert error_of(post_form(base, form(("purpose", b"batch", None), file_part, file_part)), 400)["param"] == "file"
    assert error_of(post_form(base, form(("purpose", b"batch", None), ("file", b"{}", None))), 400)["param"] == "file"
    assert error_of(post_form(base, form(("purpose", b"batch", None), file_part)[:-12]), 400)["param"] == "file"
    assert error_of(post_form(base, form(("purpose", b"x" * 5000, None), file_part)), 400)["param"] == "purpose"
    nul_name = form(("purpose", b"batch", None), ("file", b"{}\n", "a\x00b.jsonl"))
    assert error_of(post_form(base, nul_name), 400)["param"] == "file"
    latin1_name = form(("purpose", b"batch", None), ("file", b"{}\n", "\u00ff.jsonl")).replace(b"\xc3\xbf", b"\xff")
    assert error_of(post_form(base, latin1_name), 400)["param"] == "file"
    assert error_of(httpx.post(base + "/v1/files", content=b"x", headers={"content-type": "multipart/form-data"}),
                    400)["param"] == "file"


def test_expires_after_sets_the_files_expiry(served: tuple[openai.OpenAI, str]) -> None:
    client, base = served
    upload = client.files.create(file=("x.jsonl", b"{}\n"), purpose="batch",
                                 expires_after={"anchor": "created_at", "seconds": 3600})
    assert upload.expires_at is not None and upload.expires_at - upload.created_at in (3599, 3600, 3601)
    default = client.files.create(file=("y.jsonl", b"{}\n"), purpose="batch")
    assert default.expires_at == default.created_at + 30 * 86400  # [files] retention_days = 30
    bad = form(("purpose", b"batch", None), ("expires_after[anchor]", b"created_at", None),
               ("expires_after[seconds]", b"5", None), ("file", b"{}\n", "x.jsonl"))
    assert error_of(post_form(base, bad), 400)["param"] == "expires_after.seconds"


def test_an_upload_over_the_limit_is_413(store_url: str) -> None:
    gateway = gateway_for(store_url, batch=FAST.model_copy(update={"max_file_bytes": 1000}))
    with serve_in_thread(create_app(gateway)) as base:
        body = form(("purpose", b"batch", None), ("file", b"z" * 1001, "x.jsonl"))
        assert error_of(post_form(base, body), 413)["param"] == "file"
        assert post_form(base, form(("purpose", b"batch", None), ("file", b"z" * 1000, "x.jsonl"))).status_code == 200


def test_nul_and_non_ascii_ids_are_unknown_not_store_errors(served: tuple[openai.OpenAI, str]) -> None:
    _, base = served
    for bad in ("file-\x00", "\x00", "file-\u00e9", "batch_\x00"):
        for method, path in (("GET", "/v1/files/{}"), ("DELETE", "/v1/files/{}"), ("GET", "/v1/files/{}/content"),
                             ("GET", "/v1/batches/{}"), ("POST", "/v1/batches/{}/cancel")):
            error = error_of(httpx.request(method, base + path.format(quote(bad, safe=""))), 404)
            assert error["type"] == "invalid_request_error"
        create = httpx.post(base + "/v1/batches", json={"input_file_id": bad, "endpoint": "/v1/chat/completions",
                                                        "completion_window": "24h"})
        assert error_of(create, 404)["param"] == "input_file_id"
        for path in ("/v1/files", "/v1/batches"):
            listed = httpx.get(base + path, params={"after": bad})
            assert listed.status_code == 200 and listed.json()["data"] == []
        assert error_of(httpx.get(base + "/v1/files", params={"purpose": bad}), 400)["param"] == "purpose"
    for params, param in (({"limit": "abc"}, "limit"), ({"limit": "0"}, "limit"), ({"limit": "10001"}, "limit"),
                          ({"order": "sideways"}, "order")):
        assert error_of(httpx.get(base + "/v1/files", params=params), 400)["param"] == param


# -- retention ---------------------------------------------------------------------------------------


def test_purge_deletes_expired_files_and_trims_finished_batches(store: TraceStore) -> None:
    queue = BatchStore(store=store)
    t0 = 1_000_000.0
    old = queue.add_file(purpose="batch", filename="old.jsonl", content=b"x" * (CHUNK_BYTES + 5), now=t0)
    soon = queue.add_file(purpose="batch", filename="soon.jsonl", content=b"y", now=t0 + 50, expires_at=t0 + 60)
    young = queue.add_file(purpose="batch", filename="young.jsonl", content=b"z", now=t0 + 50)
    lines = [NewLine(line_no=1, custom_id="a", body='{"model": "cheap"}', model="cheap")]
    batch = queue.add_batch(input_file_id=young.id, endpoint="/v1/chat/completions", completion_window="24h",
                            metadata=None, lines=lines, now=t0)
    [claim] = queue.claim(owner="o", limit=1, lease_s=10, now=t0)
    assert queue.finish(claim, owner="o", state="done", request_id="r", response={"ok": 1}, now=t0)
    assert queue.finalize_ready(now=t0) == [batch.id]
    output = queue.get_batch(batch.id).output_file_id  # type: ignore[union-attr]

    assert queue.purge_expired(now=t0 + 70, retention_s=None) == [soon.id]  # only the explicit expiry
    assert sorted(queue.purge_expired(now=t0 + 101, retention_s=100)) == sorted([old.id, output])
    assert queue.get_file(old.id) is None and queue.file_content(old.id) is None
    assert queue.get_file(young.id) is not None
    rows = store.conn.cursor().execute("SELECT COUNT(*) FROM batch_file_chunks").fetchone()
    assert rows[0] == 1  # young's single chunk; the deleted files' chunks went with them
    assert queue.counts(batch.id) == {"done": 1}  # the counts stay, the texts go
    assert store.conn.cursor().execute("SELECT body, response FROM batch_lines").fetchall() == [(None, None)]
    assert queue.purge_expired(now=t0 + 200, retention_s=100, every_s=1000) == [young.id]
    queue.add_file(purpose="batch", filename="later.jsonl", content=b"w", now=t0)
    assert queue.purge_expired(now=t0 + 300, retention_s=100, every_s=1000) == []  # throttled


@pytest.mark.anyio
async def test_the_runner_tick_purges_expired_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/r.db"
    gateway = gateway_for(url, files=FilesConfig(retention_days=1))
    queue = BatchStore(store=gateway.store)
    stale = queue.add_file(purpose="batch", filename="a.jsonl", content=b"a", now=time.time() - 2 * 86400)
    fresh = queue.add_file(purpose="batch", filename="b.jsonl", content=b"b", now=time.time())
    runner = BatchRunner(gateway=gateway, queue=queue, render=completion_body)
    await runner.tick()
    assert queue.get_file(stale.id) is None and queue.get_file(fresh.id) is not None


@pytest.mark.anyio
async def test_a_stalled_upload_is_a_408_and_leaves_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_for(f"sqlite:///{tmp_path}/s.db", files=FilesConfig(upload_idle_s=0.2))

    async def stalling() -> AsyncIterator[bytes]:
        yield form(("purpose", b"batch", None))[:-30]
        await asyncio.sleep(2)
        yield b"never read"

    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://w") as client:
        response = await client.post("/v1/files", content=stalling(),
                                     headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert response.status_code == 408 and response.json()["error"]["param"] == "file"
    assert BatchStore(store=gateway.store).list_files(limit=10) == []


def test_files_stored_before_chunking_still_read_back(store: TraceStore) -> None:
    queue = BatchStore(store=store)
    mark = "%s" if queue.postgresql else "?"
    with queue._tx() as q:  # a row as migration 0002 wrote it: the bytes in batch_files.content
        q.cursor.execute("INSERT INTO batch_files (id, purpose, filename, bytes, created_at, kind, content) "
                         f"VALUES ({', '.join([mark] * 7)})", ("file-legacy", "batch", "old.jsonl", 3, 1.0,
                                                               "upload", b"abc"))
    assert queue.file_content("file-legacy") == b"abc"
    assert queue.purge_expired(now=100.0, retention_s=50) == ["file-legacy"]
    assert queue.get_file("file-legacy") is None
