"""The trace store on SQLite and PostgreSQL: migrations, batched writes, reads, export."""

from __future__ import annotations

import json
import time

import pytest

from wattwise.outcomes import load_outcomes, write_outcomes
from wattwise.store.export import to_outcomes
from wattwise.store.migrations import MIGRATIONS, apply_migrations
from wattwise.store.records import TraceRecord
from wattwise.store.sql import TraceStore
from wattwise.store.writer import TraceWriter


def record(i: int, **kw: object) -> TraceRecord:
    base: dict[str, object] = {
        "id": f"req_{i}", "ts": 1_700_000_000.0 + i, "requested_model": "auto", "model": "m",
        "messages": json.dumps([{"role": "user", "content": f"prompt {i % 3}"}]), "response": "ok",
        "prompt_hash": f"h{i % 3}", "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.01,
        "cost_source": "priced", "energy_j": 2.0, "energy_source": "estimated", "latency_s": 0.1}
    base.update(kw)
    return TraceRecord(**base)  # type: ignore[arg-type]


def test_migrations_apply_once(store: TraceStore) -> None:
    assert apply_migrations(store.conn, dialect=store.dialect) == []
    cur = store.conn.cursor()
    cur.execute("SELECT name FROM schema_migrations")
    assert [r[0] for r in cur.fetchall()] == [name for name, _ in MIGRATIONS]


def test_insert_fetch_filters_and_get(store: TraceStore) -> None:
    store.insert([record(i) for i in range(10)])
    assert store.count() == 10
    assert [r.id for r in store.fetch(since=1_700_000_005.0)] == [f"req_{i}" for i in range(5, 10)]
    got = store.get("req_3")
    assert got is not None and got.stream is False and got.cost_usd == pytest.approx(0.01)
    assert store.get("nope") is None
    assert store.set_score("req_3", 0.5) and not store.set_score("nope", 0.5)


def test_writer_batches_and_drains_on_close(store: TraceStore) -> None:
    writer = TraceWriter(store=store, batch_size=7, flush_interval_s=5.0)
    writer.start()
    for i in range(50):
        writer.submit(record(i))
    writer.close()  # must drain everything even though the flush interval never elapsed
    assert store.count() == 50 and writer.written == 50 and writer.failed == 0


def test_writer_flush_waits_for_rows(store: TraceStore) -> None:
    writer = TraceWriter(store=store, batch_size=256, flush_interval_s=0.01)
    writer.start()
    writer.submit(record(1))
    writer.flush(timeout=5)
    assert store.count() == 1
    writer.close()


def test_writer_survives_a_failing_batch(store: TraceStore) -> None:
    writer = TraceWriter(store=store, batch_size=1, flush_interval_s=0.01)
    writer.start()
    writer.submit(record(1))
    writer.submit(record(1, model="dup"))  # duplicate id: skipped (a journal replay), the writer goes on
    writer.submit(record(2))
    deadline = time.monotonic() + 5
    while writer.written + writer.failed < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.close()
    assert writer.failed == 0 and store.count() == 2 and store.get("req_1").model == "m"  # type: ignore[union-attr]


def test_export_outcomes_only_scored_ok_rows(store: TraceStore, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store.insert([record(0, score=1.0), record(1, score=0.0, model="n"), record(2),
                  record(3, score=1.0, status="error"), record(4, score=1.0, messages=None)])
    rows, skipped = to_outcomes(store.fetch())
    assert [(r.prompt_id, r.model, r.score) for r in rows] == [("h0", "m", 1.0), ("h1", "n", 0.0)]
    assert skipped == 3
    write_outcomes(tmp_path / "x.jsonl.gz", rows)
    assert load_outcomes(tmp_path / "x.jsonl.gz") == rows
