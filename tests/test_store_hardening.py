"""The trace store never loses a row: a value it cannot take spoils no other row, and a crash loses
nothing submitted (the write-ahead journal). Each test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tests.conftest import make_gateway
from tests.test_store import record

from wattwise.api.app import create_app
from wattwise.backends.mock import MockBackend
from wattwise.config import StoreConfig
from wattwise.exceptions import StoreError
from wattwise.store.journal import Journal, decode, default_directory, encode, orphans, store_key
from wattwise.store.records import clean_text
from wattwise.store.sql import TraceStore
from wattwise.store.writer import TraceWriter

SURROGATE = "\udc00"


def written(writer: TraceWriter, n: int) -> None:
    deadline = time.monotonic() + 10
    while writer.written + writer.failed < n and time.monotonic() < deadline:
        time.sleep(0.01)


def test_clean_text_replaces_surrogates_and_nul() -> None:
    assert clean_text("a\x00b" + SURROGATE + "c\ud83d") == "a\ufffdb\ufffdc\ufffd"
    assert clean_text("plain é 😀") == "plain é 😀"


def test_lone_surrogate_spoils_no_other_row(store: TraceStore, tmp_path: Path) -> None:
    """Seen: one ``"name": "\\udc00"`` in a message dropped its whole batch (501 answered, 480 rows)."""
    writer = TraceWriter(store=store, batch_size=256, flush_interval_s=0.01, journal_dir=str(tmp_path / "j"))
    bad = json.dumps([{"role": "user", "content": "hi", "name": SURROGATE}], ensure_ascii=False)
    for i in range(50):
        writer.submit(record(i, messages=bad) if i == 7 else record(i))
    writer.start()
    written(writer, 50)
    writer.close()
    assert store.count() == 50 and writer.failed == 0
    kept = store.get("req_7")
    assert kept is not None and kept.messages == bad.replace(SURROGATE, "\ufffd")
    assert store.get("req_8").messages == record(8).messages  # type: ignore[union-attr]


def test_nul_in_user_and_answer_spoils_no_other_row(store: TraceStore, tmp_path: Path) -> None:
    """Seen on PostgreSQL: ``"user": "a\\u0000b"`` dropped 23 rows; an upstream answer with NUL lost its row."""
    writer = TraceWriter(store=store, flush_interval_s=0.01, journal_dir=str(tmp_path / "j"))
    for i in range(30):
        writer.submit(record(i, tag="a\x00b", response="x\x00y") if i in (3, 4) else record(i))
    writer.start()
    written(writer, 30)
    writer.close()
    assert store.count() == 30 and writer.failed == 0
    row = store.get("req_3")
    assert row is not None
    # SQLite can store NUL and keeps it; PostgreSQL cannot, and gets U+FFFD in its place.
    nul = "\x00" if store.dialect == "sqlite" else "\ufffd"
    assert (row.tag, row.response) == (f"a{nul}b", f"x{nul}y")


def test_row_unstorable_after_cleaning_is_stored_with_its_error(store: TraceStore, tmp_path: Path) -> None:
    writer = TraceWriter(store=store, flush_interval_s=0.01, journal_dir=str(tmp_path / "j"))
    for i in range(10):
        writer.submit(record(i, output_tokens=2**70, error="upstream said so") if i == 5 else record(i))
    writer.start()
    written(writer, 10)
    writer.close()
    assert store.count() == 10 and writer.stubbed == 1
    stub = store.get("req_5")
    assert stub is not None and stub.output_tokens is None and stub.messages is None
    assert stub.error is not None and stub.error.startswith("trace row not storable (")
    assert stub.error.endswith("; request error: upstream said so")
    assert store.get("req_6").output_tokens == 5  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_gateway_keeps_every_row_around_an_answer_with_nul(store: TraceStore, monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """Seen on PostgreSQL: an upstream answer containing NUL lost its row (and its batch)."""
    monkeypatch.chdir(tmp_path)  # PostgreSQL's default journal is ./wattwise-journal
    gateway = make_gateway(store, backends={"cheap": MockBackend(name="cheap", reply="x\x00y"),
                                            "dear": MockBackend(name="dear")})
    await gateway.start()
    try:
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://wattwise") as client:
            bodies = [{"model": "cheap" if i % 5 == 0 else "dear", "user": "a\x00b" if i == 3 else "u",
                       "messages": [{"role": "user", "content": f"hello {i}"}]} for i in range(20)]
            answers = [await client.post("/v1/chat/completions", json=body) for body in bodies]
            assert [a.status_code for a in answers] == [200] * 20
            gateway.writer.flush()
            assert store.count() == 20
            row = store.get(answers[0].headers["x-wattwise-request-id"])
            assert row is not None and row.response in ("x\x00y", "x\ufffdy")
    finally:
        await gateway.stop()


def test_in_memory_store_keeps_the_writer_threads_rows() -> None:
    """``sqlite://`` gave each connection its own database: the writer thread's rows went nowhere."""
    store = TraceStore(url="sqlite://")
    store.migrate()
    writer = TraceWriter(store=store, flush_interval_s=0.01)
    writer.start()
    writer.submit(record(1))
    writer.flush()
    writer.close()
    assert writer.failed == 0 and store.count() == 1
    store.close()


def test_database_down_rows_are_retried_not_dropped(store: TraceStore, tmp_path: Path) -> None:
    class Flaky(TraceStore):
        down = True

        def insert(self, records: object) -> None:
            if self.down:
                raise StoreError("connection refused")
            store.insert(records)  # type: ignore[arg-type]

    flaky = Flaky(url=store.url)
    writer = TraceWriter(store=flaky, flush_interval_s=0.01, journal_dir=str(tmp_path / "j"))
    writer.start()
    for i in range(20):
        writer.submit(record(i))
    time.sleep(0.1)
    assert store.count() == 0 and writer.failed == 0
    flaky.down = False
    written(writer, 20)
    writer.close()
    assert store.count() == 20 and list((tmp_path / "j").iterdir()) == []


def test_rows_left_at_close_while_down_stay_in_the_journal(store: TraceStore, tmp_path: Path) -> None:
    class Down(TraceStore):
        def insert(self, records: object) -> None:
            raise StoreError("connection refused")

    journal = tmp_path / "j"
    writer = TraceWriter(store=Down(url=store.url), flush_interval_s=0.01, journal_dir=str(journal))
    writer.start()
    for i in range(5):
        writer.submit(record(i))
    writer.close()
    assert writer.failed == 5 and store.count() == 0
    later = TraceWriter(store=store, journal_dir=str(journal))
    later.start()
    later.close()
    assert later.recovered == 5 and store.count() == 5 and list(journal.iterdir()) == []


CRASHER = """
import os, signal, sys
from tests.test_store import record
from wattwise.store.sql import open_store
from wattwise.store.writer import TraceWriter
writer = TraceWriter(store=open_store(sys.argv[1]), flush_interval_s=600, journal_dir=sys.argv[2])
writer.start()
for i in range(40):
    writer.submit(record(i, tag="a\\x00b" if i == 3 else None))
print("submitted", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kill9_after_submit_loses_nothing(store_url: str, store: TraceStore, tmp_path: Path) -> None:
    """Seen: ``kill -9`` at 100 req/s lost 3-18 answered rows that were still in the writer's queue."""
    journal = tmp_path / "j"
    crash = subprocess.run([sys.executable, "-c", CRASHER, store_url, str(journal)], capture_output=True,
                           text=True, timeout=60, cwd=Path(__file__).parent.parent, env={**os.environ})
    assert crash.returncode == -signal.SIGKILL and "submitted" in crash.stdout, crash.stderr
    assert store.count() == 0  # the writer never flushed: everything is in the journal only
    writer = TraceWriter(store=store, journal_dir=str(journal))
    writer.start()
    writer.close()
    assert writer.recovered == 40 and store.count() == 40 and list(journal.iterdir()) == []


def test_replay_is_idempotent(store: TraceStore, tmp_path: Path) -> None:
    directory = tmp_path / "j"
    key = store_key(store.url)
    dead = Journal(directory=directory, store_key=key)
    for i in range(6):
        dead.append(record(i))
    store.insert([record(i) for i in range(3)])  # committed before the crash; the journal not yet cut
    os.close(dead._current.fd)  # type: ignore[union-attr]  # the process dies: its lock goes
    writer = TraceWriter(store=store, journal_dir=str(directory))
    writer.start()
    writer.close()
    assert store.count() == 6 and list(directory.iterdir()) == []


def test_live_journal_is_not_recovered(store: TraceStore, tmp_path: Path) -> None:
    directory = str(tmp_path / "j")
    live = TraceWriter(store=store, flush_interval_s=600, journal_dir=directory)
    live.start()
    live.submit(record(1))
    other = TraceWriter(store=store, journal_dir=directory)
    other.start()
    other.close()
    assert other.recovered == 0 and store.count() == 0
    live.close()
    assert store.count() == 1 and list(Path(directory).iterdir()) == []


def test_foreign_store_journal_is_left_alone(store: TraceStore, tmp_path: Path) -> None:
    directory = tmp_path / "j"
    dead = Journal(directory=directory, store_key="sqlite:///elsewhere.db")
    dead.append(record(1))
    os.close(dead._current.fd)  # type: ignore[union-attr]
    writer = TraceWriter(store=store, journal_dir=str(directory))
    writer.start()
    writer.close()
    assert store.count() == 0 and len(list(directory.glob("*.journal"))) == 1


def test_torn_last_line_is_skipped(store: TraceStore, tmp_path: Path) -> None:
    directory = tmp_path / "j"
    dead = Journal(directory=directory, store_key=store_key(store.url))
    dead.append(record(1))
    segment = dead._current
    assert segment is not None
    os.write(segment.fd, encode(record(2))[:40])  # a power cut mid-line
    os.close(segment.fd)
    [orphan] = list(orphans(directory, store_key=store_key(store.url)))
    with orphan:
        assert [r.id for r in orphan.records] == ["req_1"] and orphan.torn == 1


def test_segments_rotate_and_committed_ones_go(tmp_path: Path) -> None:
    journal = Journal(directory=tmp_path, store_key="k", rotate_s=0.0)
    journal.open()
    first = journal.append(record(1))
    journal.rotate()
    second = journal.append(record(2))
    assert first is not second and len(list(tmp_path.glob("*.journal"))) == 2
    journal.settle(first, 1)
    assert not first.path.exists() and second.path.exists()
    journal.settle(second, 1, kept=True)  # given up on: stays for the next start
    journal.close()
    assert second.path.exists()


def test_journal_line_round_trips_unstorable_text() -> None:
    odd = record(1, tag="a\x00b", messages=SURROGATE, output_tokens=2**70)
    line = encode(odd)
    assert line.isascii() and line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == odd


def test_journal_directory_defaults() -> None:
    assert default_directory("sqlite:///data/t.db") == Path("data/t.db.wattwise-journal")
    assert default_directory("sqlite:////abs/t.db") == Path("/abs/t.db.wattwise-journal")
    assert default_directory("sqlite://") is None
    assert default_directory("postgresql://127.0.0.1/test") == Path("wattwise-journal")
    assert store_key("postgresql://u:secret@h/db") == "postgresql://u@h/db"
    assert StoreConfig().journal_dir is None and StoreConfig(journal_dir="").journal_dir == ""
    assert TraceWriter(store=TraceStore(url="sqlite://"), journal_dir=None).journal is None


def test_unusable_journal_directory_is_a_store_error(store: TraceStore, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    writer = TraceWriter(store=store, journal_dir=str(tmp_path / "file"))
    with pytest.raises(StoreError, match="cannot open the trace journal"):
        writer.start()
