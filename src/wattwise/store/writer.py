"""Batched trace writes off the request path.

Requests hand their record to :meth:`TraceWriter.submit` (a non-blocking queue put); one thread
wakes every ``flush_interval_s`` and writes what has queued, ``batch_size`` rows a commit.
:meth:`close` drains the queue, so a graceful shutdown (SIGTERM/SIGINT through the server's
lifespan) loses nothing that was submitted.

Usage::

    writer = TraceWriter(store=store, batch_size=256, flush_interval_s=0.2)
    writer.start()
    writer.submit(record)
    writer.close()
"""

from __future__ import annotations

import logging
import queue
import threading

from wattwise.exceptions import StoreError
from wattwise.store.records import TraceRecord
from wattwise.store.sql import TraceStore

log = logging.getLogger(__name__)
_STOP = object()


class TraceWriter:
    def __init__(self, *, store: TraceStore, batch_size: int = 256, flush_interval_s: float = 0.2) -> None:
        self.store = store
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="wattwise-trace-writer", daemon=True)
        self._flushed = threading.Condition()
        self._wake = threading.Event()
        self.submitted = 0
        self.written = 0
        self.failed = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, record: TraceRecord) -> None:
        self.submitted += 1
        self._queue.put(record)

    def _drain(self) -> tuple[list[TraceRecord], bool]:
        """Everything queued now. Submitting never wakes this thread (it sleeps a fixed interval),
        so the event loop does not trade the GIL with it on every request."""
        batch: list[TraceRecord] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
            if item is _STOP:
                return batch, True
            assert isinstance(item, TraceRecord)
            batch.append(item)

    def _write(self, batch: list[TraceRecord]) -> None:
        try:
            self.store.insert(batch)
            self.written += len(batch)
        except StoreError as exc:
            self.failed += len(batch)
            log.error("dropped %d trace rows: %s", len(batch), exc)
        with self._flushed:
            self._flushed.notify_all()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            self._wake.wait(self.flush_interval_s)
            batch, stopping = self._drain()
            for start in range(0, len(batch), self.batch_size):
                self._write(batch[start:start + self.batch_size])

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
