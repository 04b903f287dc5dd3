"""The Batch API through the official openai client, on SQLite and PostgreSQL: files, batches,
progress, cancel, output and error files, bad lines."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest
from tests.conftest import make_config

from wattwise.api.app import create_app
from wattwise.backends.mock import MockBackend
from wattwise.config import BatchConfig
from wattwise.exceptions import UpstreamError
from wattwise.gateway import Gateway
from wattwise.inprocess import serve_in_thread
from wattwise.store.sql import open_store

FAST = BatchConfig(poll_interval_s=0.05, lease_s=5.0, max_concurrency=4)


def line(custom_id: str, text: str, model: str = "cheap", **extra: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], **extra}}


def jsonl(rows: list[Any]) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def serve(store_url: str, *, delay_s: float = 0.0, batch: BatchConfig = FAST) -> Iterator[tuple[str, Gateway]]:
    store = open_store(store_url)
    config = make_config(store_url).model_copy(update={"batch": batch})
    backends = {"cheap": MockBackend(name="cheap", reply=None, delay_s=delay_s), "dear": MockBackend(name="dear")}
    gateway = Gateway(config=config, backends=backends, store=store)  # type: ignore[arg-type]
    with serve_in_thread(create_app(gateway)) as base:
        yield base, gateway


@contextmanager
def client_for(base: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base + "/v1", api_key="anything", max_retries=0) as client:
        yield client


@pytest.fixture
def server(store_url: str) -> Iterator[tuple[openai.OpenAI, Gateway]]:
    for base, gateway in serve(store_url):
        with client_for(base) as client:
            yield client, gateway


@pytest.fixture
def slow_server(store_url: str) -> Iterator[tuple[openai.OpenAI, Gateway]]:
    for base, gateway in serve(store_url, delay_s=0.2, batch=FAST.model_copy(update={"max_concurrency": 2})):
        with client_for(base) as client:
            yield client, gateway


def wait_status(client: openai.OpenAI, batch_id: str, statuses: set[str], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}: {batch.request_counts}"
        time.sleep(0.05)


def read_jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def test_batch_round_trip_with_bad_lines(server: tuple[openai.OpenAI, Gateway]) -> None:
    client, gateway = server
    rows: list[Any] = [line(f"ok-{i}", f"echo {i}") for i in range(6)]
    rows.insert(2, "{not json")
    rows.insert(4, {"custom_id": "no-messages", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "cheap"}})
    rows.append(line("ghost", "hi", model="missing-model"))
    rows.append(line("ok-0", "duplicate id"))
    rows.append(line("bad-temp", "hi", temperature=9))
    upload = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(rows))), purpose="batch")
    assert upload.purpose == "batch" and upload.filename == "in.jsonl" and upload.bytes > 0
    assert client.files.retrieve(upload.id).id == upload.id

    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"job": "nightly"})
    assert batch.request_counts is not None and batch.request_counts.total == 11
    assert batch.metadata == {"job": "nightly"}
    done = wait_status(client, batch.id, {"completed"})
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (6, 5)

    output = read_jsonl(client, done.output_file_id)
    assert [o["custom_id"] for o in output] == [f"ok-{i}" for i in range(6)]
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in output)
    assert output[3]["response"]["body"]["choices"][0]["message"]["content"] == "echo 3"
    assert len(gateway.backends["cheap"].calls) == 6  # type: ignore[attr-defined]  # each valid line once

    errors = {e["error"]["line"]: e for e in read_jsonl(client, done.error_file_id)}
    assert sorted(errors) == [3, 5, 9, 10, 11]
    assert errors[3]["error"]["message"].startswith(f"in.jsonl ({upload.id}) line 3: not valid JSON")
    assert errors[5]["error"]["param"] == "body.messages" and "line 5, field 'body.messages'" in \
        errors[5]["error"]["message"]
    assert errors[9]["error"]["param"] == "body.model" and errors[9]["custom_id"] == "ghost"
    assert errors[10]["error"]["param"] == "custom_id"
    assert errors[11]["error"]["param"] == "body.temperature"
    assert done.errors is not None and done.errors.data is not None
    assert {e.line for e in done.errors.data} == {3, 5, 9, 10, 11}

    # Each line was one metered, traced request with the batch's tag and priority.
    gateway.writer.flush()
    traced = [r for r in gateway.store.fetch() if r.tag == f"batch:{batch.id}"]
    assert sorted(r.id for r in traced) == sorted(o["response"]["request_id"] for o in output)
    assert all(r.cost_usd is not None and r.status == "ok" for r in traced)
    assert [b.id for b in client.batches.list()] == [batch.id]


def test_backend_failure_goes_to_the_error_file(server: tuple[openai.OpenAI, Gateway]) -> None:
    client, gateway = server
    gateway.backends["dear"].fail = UpstreamError("boom")  # type: ignore[attr-defined]
    upload = client.files.create(file=("x.jsonl", jsonl([line("a", "hi"), line("b", "hi", model="dear")])),
                                 purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    done = wait_status(client, batch.id, {"completed"})
    [failed] = read_jsonl(client, done.error_file_id)
    assert failed["custom_id"] == "b" and failed["error"] is None
    assert failed["response"]["status_code"] == 502
    assert failed["response"]["body"]["error"]["message"] == "boom"


def test_cancel_keeps_done_lines_and_reports_the_rest(slow_server: tuple[openai.OpenAI, Gateway]) -> None:
    client, _ = slow_server
    upload = client.files.create(file=("in.jsonl", jsonl([line(f"c{i}", "hi") for i in range(20)])),
                                 purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    deadline = time.monotonic() + 10
    while (client.batches.retrieve(batch.id).request_counts or batch.request_counts).completed < 2:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    done = wait_status(client, batch.id, {"cancelled"})
    assert done.cancelled_at is not None and done.output_file_id is not None
    output = read_jsonl(client, done.output_file_id)
    cancelled = read_jsonl(client, done.error_file_id)
    assert {e["error"]["code"] for e in cancelled} == {"batch_cancelled"}
    assert len(output) + len(cancelled) == 20 and len(output) < 20
    assert sorted(o["custom_id"] for o in output + cancelled) == sorted(f"c{i}" for i in range(20))
    assert client.batches.cancel(batch.id).status == "cancelled"  # idempotent


def test_request_errors_use_openai_bodies(server: tuple[openai.OpenAI, Gateway]) -> None:
    client, _ = server
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    assert info.value.body["param"] == "purpose"  # type: ignore[index]
    upload = client.files.create(file=("x.jsonl", jsonl([line("a", "hi")])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                              completion_window="1h")  # type: ignore[arg-type]
    assert info.value.body["param"] == "completion_window"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    assert info.value.body["param"] == "endpoint"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions",
                              completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-missing")
    empty = client.files.create(file=("e.jsonl", b"\n\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=empty.id, endpoint="/v1/chat/completions", completion_window="24h")
    response = httpx.post(str(client.base_url).removesuffix("/v1/") + "/v1/files", content=b"plain",
                          headers={"content-type": "text/plain"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"


BAD_CREATES: list[tuple[dict[str, Any], str]] = [
    ({"completion_window": []}, "completion_window"),
    ({"completion_window": {"a": 1}}, "completion_window"),
    ({"completion_window": None}, "completion_window"),
    ({"endpoint": ["/v1/chat/completions"]}, "endpoint"),
    ({"endpoint": "/v1/unknown"}, "endpoint"),
    ({"input_file_id": 5}, "input_file_id"),
    ({"input_file_id": None}, "input_file_id"),
    ({"metadata": ["a"]}, "metadata"),
    ({"metadata": {"k": 5}}, "metadata.k"),
    ({"metadata": {"k": "v" * 513}}, "metadata.k"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k": "\udc00"}}, "metadata.k"),
]


def test_batch_create_with_wrong_types_is_a_400(server: tuple[openai.OpenAI, Gateway]) -> None:
    client, _ = server
    base = str(client.base_url).removesuffix("/v1/")
    upload = client.files.create(file=("x.jsonl", jsonl([line("a", "hi")])), purpose="batch")
    for body, param in BAD_CREATES:
        request = {"input_file_id": upload.id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **body}
        response = httpx.post(base + "/v1/batches", content=json.dumps(request).encode(),
                              headers={"content-type": "application/json"})
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, body
    assert client.batches.list().data == []


def test_unencodable_lines_go_to_the_error_file(server: tuple[openai.OpenAI, Gateway]) -> None:
    client, _ = server
    content = jsonl([line("ok", "hi"), line("lone", "\udc00"), line("nul\x00id", "hi"), line("nul-text", "a\x00b")])
    content += b'{"custom_id": "raw", "method": "POST", "url": "/v1/chat/completions", ' \
               b'"body": {"model": "cheap", "messages": [{"role": "user", "content": "\xed\xb0\x80"}]}}\n'
    upload = client.files.create(file=("in.jsonl", content), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_status(client, batch.id, {"completed"})
    assert sorted(o["custom_id"] for o in read_jsonl(client, done.output_file_id)) == ["nul-text", "ok"]
    errors = {e["error"]["line"]: e["error"] for e in read_jsonl(client, done.error_file_id)}
    assert sorted(errors) == [2, 3, 5]
    assert errors[2]["param"] == "body.messages[0].content" and "surrogate" in errors[2]["message"]
    assert errors[3]["param"] == "custom_id" and "NUL" in errors[3]["message"]
    assert "not valid UTF-8" in errors[5]["message"]
