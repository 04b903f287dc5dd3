"""Batched trace writes off the request path.

Requests hand their record to :meth:`TraceWriter.submit` (a non-blocking queue put); one thread
writes batches. :meth:`close` drains the queue, so a graceful shutdown (SIGTERM/SIGINT through
the server's lifespan) loses nothing that was submitted.

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
        self.submitted = 0
        self.written = 0
        self.failed = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, record: TraceRecord) -> None:
        self.submitted += 1
        self._queue.put(record)

    def _take_batch(self) -> tuple[list[TraceRecord], bool]:
        batch: list[TraceRecord] = []
        try:
            item = self._queue.get(timeout=self.flush_interval_s)
        except queue.Empty:
            return batch, False
        while True:
            if item is _STOP:
                return batch, True
            assert isinstance(item, TraceRecord)
            batch.append(item)
            if len(batch) >= self.batch_size:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False

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
            batch, stopping = self._take_batch()
            if batch:
                self._write(batch)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted so far is written (for tests and reports)."""
        target = self.submitted
        with self._flushed:
            self._flushed.wait_for(lambda: self.written + self.failed >= target, timeout=timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
