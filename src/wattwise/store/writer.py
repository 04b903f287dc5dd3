"""Batched trace writes off the request path, journaled first so a crash loses no answered request.

Requests hand their record to :meth:`TraceWriter.submit`, which appends it to a write-ahead
:mod:`journal <wattwise.store.journal>` (one ``os.write``) and queues it; the gateway submits before
it sends the response, so a request answered 2xx is on disk even if the process is then killed.
One thread wakes every ``flush_interval_s`` and writes what has queued, ``batch_size`` rows a
commit, then lets the journal drop what is committed. :meth:`start` first stores the rows of any
journal a dead process left. :meth:`close` drains the queue (SIGTERM/SIGINT through the server's
lifespan), so a graceful shutdown leaves no journal behind.

A row the store refuses cannot take its batch with it: the batch is retried with text cleaned
(:meth:`TraceRecord.cleaned`: lone surrogates and NUL become U+FFFD), then row by row, and a row
that still fails is stored as a :meth:`TraceRecord.stub` with the reason in ``error``. Rows the
database cannot take at all (it is down) are retried on the next wake; they stay in the journal.

Usage::

    writer = TraceWriter(store=store, batch_size=256, flush_interval_s=0.2)   # journal by default
    writer.start()                      # replays a dead process's journal into the store
    writer.submit(record)               # journaled when this returns
    writer.close()
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from pathlib import Path

from wattwise.exceptions import StoreError
from wattwise.store.journal import Journal, Segment, default_directory, orphans, store_key
from wattwise.store.records import TraceRecord
from wattwise.store.sql import TraceStore

log = logging.getLogger(__name__)
_STOP = object()
Item = tuple[TraceRecord, Segment | None]
# Rows kept in memory for retry while the database is down; past this the oldest wait for a restart.
MAX_RETRY = 100_000


class TraceWriter:
    """``journal_dir``: ``None`` for :func:`~wattwise.store.journal.default_directory`, ``""`` for no
    journal (a crash then loses the queued rows); ``journal_fsync``: ``fsync`` each line (power loss).
    """

    def __init__(self, *, store: TraceStore, batch_size: int = 256, flush_interval_s: float = 0.2,
                 journal_dir: str | None = None, journal_fsync: bool = False) -> None:
        self.store = store
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        directory = default_directory(store.url) if journal_dir is None else Path(journal_dir) if journal_dir else None
        self.journal = None if directory is None else Journal(directory=directory, store_key=store_key(store.url),
                                                              fsync=journal_fsync)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="wattwise-trace-writer", daemon=True)
        self._flushed = threading.Condition()
        self._wake = threading.Event()
        self._retry: list[Item] = []
        self.submitted = 0
        self.written = 0
        self.failed = 0
        self.recovered = 0
        self.stubbed = 0
        self.journal_errors = 0

    def start(self) -> None:
        """Store what a dead process's journal holds, then start writing."""
        if self.journal is not None:
            try:
                self.journal.open()
            except OSError as exc:
                raise StoreError(f"cannot open the trace journal in {self.journal.directory}: {exc}") from exc
            self.recover()
        self._thread.start()

    def recover(self) -> int:
        """Store the rows of every journal segment no live process holds; returns how many rows."""
        assert self.journal is not None
        found = 0
        for orphan in orphans(self.journal.directory, store_key=store_key(self.store.url)):
            with orphan:
                records = orphan.records
                stored = sum(self._commit(records[i:i + self.batch_size])
                             for i in range(0, len(records), self.batch_size))
                if stored < len(records):
                    log.error("journal %s: store unavailable, %d rows left for a later start",
                              orphan.path, len(records) - stored)
                    continue
                orphan.discard()
                found += stored
                log.warning("journal %s: recovered %d trace rows (%d torn lines skipped)",
                            orphan.path, stored, orphan.torn)
        self.recovered += found
        return found

    def submit(self, record: TraceRecord) -> None:
        """Journal the record (one ``os.write``), then queue it for the writer thread."""
        self.submitted += 1
        self._queue.put((record, self._journal(record)))

    def _journal(self, record: TraceRecord) -> Segment | None:
        if self.journal is None:
            return None
        try:
            return self.journal.append(record)
        except OSError as exc:
            # A full or broken disk must not fail the request; the row is then only in memory.
            self.journal_errors += 1
            if self.journal_errors == 1:
                log.error("trace journal write failed (rows are now at risk on a crash): %s", exc)
            return None

    def _drain(self) -> tuple[list[Item], bool]:
        """Everything queued now. Submitting never wakes this thread (it sleeps a fixed interval),
        so the event loop does not trade the GIL with it on every request."""
        batch: list[Item] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
            if item is _STOP:
                return batch, True
            batch.append(item)  # type: ignore[arg-type]

    def _commit(self, records: list[TraceRecord]) -> int:
        """Store ``records``; returns how many, from the front, are stored (the rest: database down)."""
        try:
            self.store.insert(records)
            return len(records)
        except StoreError as exc:
            log.warning("trace batch of %d rows refused, salvaging row by row: %s", len(records), exc)
        cleaned = [r.cleaned() for r in records]
        try:
            self.store.insert(cleaned)
            return len(records)
        except StoreError:
            pass
        for done, record in enumerate(cleaned):
            try:
                self.store.insert([record])
                continue
            except StoreError as exc:
                note = str(exc)
            try:
                self.store.insert([record.stub(note)])
            except StoreError:
                return done
            self.stubbed += 1
            log.error("trace row %s stored without its content: %s", record.id, note)
        return len(records)

    def _write(self, items: list[Item]) -> bool:
        """Commit a batch; returns False if the database took none of it (retry next wake)."""
        stored = self._commit([record for record, _ in items])
        self.written += stored
        self._settle(items[:stored], kept=False)
        self._retry.extend(items[stored:])
        with self._flushed:
            self._flushed.notify_all()
        return stored == len(items)

    def _settle(self, items: list[Item], *, kept: bool) -> None:
        if self.journal is None:
            return
        for segment, count in Counter(segment for _, segment in items if segment is not None).items():
            self.journal.settle(segment, count, kept=kept)

    def _give_up(self, items: list[Item]) -> None:
        """Stop retrying these rows in this process; their journal stays on disk for the next start."""
        if items:
            self.failed += len(items)
            self._settle(items, kept=True)
            log.error("%d trace rows not stored; they stay in the journal for the next start", len(items))

    def _cycle(self, items: list[Item]) -> None:
        items, self._retry = self._retry + items, []
        for start in range(0, len(items), self.batch_size):
            if not self._write(items[start:start + self.batch_size]):
                self._retry.extend(items[start + self.batch_size:])
                break
        overflow = len(self._retry) - MAX_RETRY
        if overflow > 0:
            self._give_up(self._retry[:overflow])
            del self._retry[:overflow]

    def _run(self) -> None:
        stopping = False
        while not stopping:
            self._wake.wait(self.flush_interval_s)
            if self.journal is not None:
                self.journal.rotate()
            items, stopping = self._drain()
            self._cycle(items)
        self._give_up(self._retry)
        self._retry = []
        with self._flushed:
            self._flushed.notify_all()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted so far is written (for tests and reports)."""
        target = self.submitted
        with self._flushed:
            self._flushed.wait_for(lambda: self.written + self.failed >= target, timeout=timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._wake.set()
            self._thread.join()
        if self.journal is not None:
            self.journal.close()
