"""The durable batch queue on SQLite and PostgreSQL: leases, fencing, concurrent claims, expiry,
and the runner's headroom and graceful stop."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from tests.conftest import make_config

from wattwise.api.app import completion_body
from wattwise.backends.mock import MockBackend
from wattwise.batch import BatchRunner, parse_input
from wattwise.config import BatchConfig
from wattwise.gateway import Gateway
from wattwise.store.batch import BatchStore, NewLine
from wattwise.store.sql import TraceStore, open_store

BODY = json.dumps({"model": "cheap", "messages": [{"role": "user", "content": "hi"}]})


def queue_with(store: TraceStore, n: int) -> tuple[BatchStore, str]:
    queue = BatchStore(store=store)
    lines = [NewLine(line_no=i, custom_id=f"c{i}", body=BODY, model="cheap") for i in range(1, n + 1)]
    batch = queue.add_batch(input_file_id="file-x", endpoint="/v1/chat/completions", completion_window="24h",
                            metadata=None, lines=lines, now=time.time())
    return queue, batch.id


def test_a_lapsed_lease_moves_the_line_and_fences_the_old_owner(store: TraceStore) -> None:
    queue, batch_id = queue_with(store, 3)
    now = time.time()
    first = queue.claim(owner="a", limit=2, lease_s=1.0, now=now)
    assert [(c.line_no, c.attempt) for c in first] == [(1, 1), (2, 1)]
    [third] = queue.claim(owner="b", limit=5, lease_s=10.0, now=now + 0.5)
    assert third.line_no == 3
    queue.heartbeat(first, owner="a", lease_until=now + 1.2)
    taken = queue.claim(owner="b", limit=5, lease_s=10.0, now=now + 2.0)
    assert [(c.line_no, c.attempt) for c in taken] == [(1, 2), (2, 2)]
    # "a" was stalled, not dead: its late results must not count.
    assert not queue.finish(first[0], owner="a", state="done", request_id="r-a", response={"n": 1}, now=now + 3)
    for claim in taken:
        assert queue.finish(claim, owner="b", state="done", request_id="r-b", response={"n": 2}, now=now + 3)
    assert queue.counts(batch_id) == {"done": 2, "running": 1}
    assert queue.finalize_ready(now=now + 3) == []
    assert queue.finish(third, owner="b", state="done", request_id="r-b3", response={"n": 3}, now=now + 3)
    assert queue.finalize_ready(now=now + 3) == [batch_id]
    assert queue.finalize_ready(now=now + 3) == []
    batch = queue.get_batch(batch_id)
    assert batch is not None and batch.status == "completed" and batch.error_file_id is None
    output = [json.loads(x) for x in (queue.file_content(batch.output_file_id or "") or b"").splitlines()]
    assert [(o["custom_id"], o["response"]) for o in output] == [("c1", {"n": 2}), ("c2", {"n": 2}),
                                                                   ("c3", {"n": 3})]


def test_concurrent_claimers_take_each_line_once(store: TraceStore) -> None:
    queue, batch_id = queue_with(store, 120)
    taken: list[tuple[str, int]] = []
    lock = threading.Lock()

    def worker(owner: str) -> None:
        while claims := queue.claim(owner=owner, limit=3, lease_s=60.0, now=time.time()):
            for claim in claims:
                assert queue.finish(claim, owner=owner, state="done", request_id=owner, response={},
                                    now=time.time())
            with lock:
                taken.extend((owner, c.line_no) for c in claims)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = sorted(n for _, n in taken)
    assert lines == list(range(1, 121))
    assert queue.counts(batch_id) == {"done": 120}


def test_past_its_window_a_batch_expires_and_reports_what_did_not_run(store: TraceStore) -> None:
    queue, batch_id = queue_with(store, 4)
    now = time.time()
    done, running = queue.claim(owner="a", limit=2, lease_s=60.0, now=now)
    assert queue.finish(done, owner="a", state="done", request_id="r", response={"ok": 1}, now=now)
    assert queue.expire_due(now=now) == []
    assert queue.expire_due(now=now + 86400.0) == [batch_id]
    assert not queue.finish(running, owner="a", state="done", request_id="r", response={}, now=now)
    assert queue.claim(owner="b", limit=5, lease_s=60.0, now=now) == []
    batch = queue.get_batch(batch_id)
    assert batch is not None and batch.status == "expired" and batch.expired_at is not None
    errors = [json.loads(x) for x in (queue.file_content(batch.error_file_id or "") or b"").splitlines()]
    assert [(e["custom_id"], e["error"]["code"], e["error"]["line"]) for e in errors] == [
        ("c2", "batch_expired", 2), ("c3", "batch_expired", 3), ("c4", "batch_expired", 4)]


def test_parse_input_names_file_line_and_field() -> None:
    content = (b'{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}\n'
               b'\n'
               b'{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", '
               b'"body": {"model": "m", "messages": [{"role": "robot", "content": "x"}]}}\n'
               b'[1, 2]\n')
    lines = parse_input(content, file_label="in.jsonl (file-1)", endpoint="/v1/chat/completions",
                        known_model=lambda name: True, max_body_bytes=1000)
    assert [(x.line_no, x.error and x.error["param"]) for x in lines] == [
        (1, "method"), (3, "body.messages[0].role"), (4, None)]
    assert lines[1].error is not None
    assert lines[1].error["message"].startswith("in.jsonl (file-1) line 3, field 'body.messages[0].role': ")
    assert lines[2].error is not None and lines[2].error["message"].endswith("each line must be a JSON object")


def runner_for(store: TraceStore, *, delay_s: float = 0.0, **batch: object) -> BatchRunner:
    config = make_config(store.url).model_copy(update={"batch": BatchConfig(**batch)})  # type: ignore[arg-type]
    gateway = Gateway(config=config, backends={"cheap": MockBackend(name="cheap", delay_s=delay_s)}, store=store)
    return BatchRunner(gateway=gateway, queue=BatchStore(store=store), render=completion_body)


@pytest.mark.anyio
async def test_runner_starts_lines_only_in_the_headroom_interactive_leaves(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    runner = runner_for(store, max_concurrency=3, max_in_flight=5)
    await runner.gateway.start()
    queue, batch_id = queue_with(store, 10)
    runner.gateway.in_flight["interactive"] = 5
    assert await runner.tick() == 0
    runner.gateway.in_flight["interactive"] = 3
    assert await runner.tick() == 2  # 5 allowed in flight, 3 interactive
    assert len(runner.running) == 2
    await asyncio.gather(*runner.running.values())
    runner.gateway.in_flight["interactive"] = 0
    assert await runner.tick() == 3  # capped by max_concurrency
    await asyncio.gather(*runner.running.values())
    assert queue.counts(batch_id) == {"done": 5, "pending": 5}
    assert runner.gateway.in_flight == {"interactive": 0, "batch": 0}
    await runner.gateway.stop()


@pytest.mark.anyio
async def test_graceful_stop_hands_running_lines_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    runner = runner_for(store, delay_s=30.0, drain_s=0.0, poll_interval_s=0.01)
    await runner.gateway.start()
    queue, batch_id = queue_with(store, 6)
    await runner.start()
    deadline = time.monotonic() + 5
    while queue.counts(batch_id).get("running", 0) < 4:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await runner.stop()
    assert queue.counts(batch_id) == {"pending": 6}
    runner.gateway.writer.flush()
    assert {r.status for r in store.fetch()} == {"cancelled"}
    await runner.gateway.stop()
