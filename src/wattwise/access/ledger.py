"""Spend rows off the request path: a journal line first (durable through ``kill -9``), the store later.

A governed request used to make two database commits of its own (its worst case before it ran, its
metered figure after), each through a worker thread: half the gateway's peak rate. Now
:meth:`SpendLedger.reserve` and :meth:`SpendLedger.settle` append one JSON line to this process's
journal file (one ``os.write``: once it returns, a crash of the process cannot lose it) and queue the
operation; a thread applies what has queued in one transaction every ``interval_s`` and empties the
journal once everything in it is in the store. At start, journals left by dead processes (their
``flock`` is free) are applied first, idempotently (the spend row's id is the request id), so a
request killed mid-call still counts at its worst case after a restart.

Without a journal directory (an in-memory store, or ``[store] journal_dir = ""``) each operation is
written synchronously, as before.

Usage::

    ledger = SpendLedger(store=AccessStore(store=trace_store), directory=Path("traces.db.wattwise-journal"))
    ledger.start()
    ledger.reserve(request_id="req_1", key_id="key_1", team=None, ts=now, usd=0.02, j=40.0)
    ledger.settle(request_id="req_1", usd=0.004, j=9.5, j_unknown=False)
    ledger.flush()                    # before reading spend back from the store
    ledger.close()
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from wattwise.exceptions import StoreError
from wattwise.store.access import AccessStore

log = logging.getLogger(__name__)


class SpendLedger:
    """The spend table's writer: journaled, batched, recovered at start."""

    def __init__(self, *, store: AccessStore, directory: Path | None, interval_s: float = 0.05) -> None:
        self.store = store
        self.directory = directory
        self.interval_s = interval_s
        self._tag = hashlib.sha256(store.store.url.encode()).hexdigest()[:12]
        self._pattern = f"spend-{self._tag}-*.jsonl"
        self._path: Path | None = None
        self._lock = threading.Lock()
        self._done = threading.Condition()
        self._queue: list[dict[str, Any]] = []
        self._appended = 0
        self._applied = 0
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Apply journals of dead processes, then open ours and start the writer thread."""
        if self.directory is None or self._thread is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._fd, self._path = self._segment()
        self._thread = threading.Thread(target=self._run, name="wattwise-spend-ledger", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what has queued, then remove this process's (now empty) journal."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._apply_queued()
        if self._fd is not None and self._applied == self._appended:
            assert self._path is not None
            _drop(self._fd, self._path)
            self._fd = None

    # -- operations ------------------------------------------------------------------------------

    def reserve(self, *, request_id: str, key_id: str, team: str | None, ts: float, usd: float, j: float) -> None:
        self._submit({"op": "reserve", "request_id": request_id, "key_id": key_id, "team": team, "ts": ts,
                      "usd": usd, "j": j})

    def settle(self, *, request_id: str, usd: float, j: float, j_unknown: bool) -> None:
        self._submit({"op": "settle", "request_id": request_id, "usd": usd, "j": j, "j_unknown": j_unknown})

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every operation submitted so far is in the store."""
        with self._done:
            target = self._appended
            self._done.wait_for(lambda: self._applied >= target or self._thread is None, timeout=timeout)

    @property
    def journaled(self) -> bool:
        return self._fd is not None

    def _submit(self, op: dict[str, Any]) -> None:
        if self._fd is None:
            apply(self.store, [op])  # no journal: synchronous, as durable as the store
            return
        line = (json.dumps(op) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)
            self._queue.append(op)
            self._appended += 1

    # -- the writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._apply_queued()
            except StoreError as exc:  # the database is down: the rows wait in the journal and the queue
                log.error("spend rows not written yet: %s", exc)

    def _segment(self) -> tuple[int, Path]:
        """A new journal file of this process, locked before anyone can see it as a dead one's."""
        assert self.directory is not None
        path = self.directory / f"spend-{self._tag}-{os.getpid()}-{secrets.token_hex(6)}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, path

    def _apply_queued(self) -> None:
        """Apply what has queued; its journal file (holding exactly those lines) goes once it is stored."""
        with self._lock:
            batch, self._queue = self._queue, []
            old = (self._fd, self._path)
            if batch and self._fd is not None:
                self._fd, self._path = self._segment()  # later lines go to a fresh file
        if not batch:
            return
        try:
            apply(self.store, batch)
        except StoreError:
            with self._lock:
                self._queue[:0] = batch  # retried next time; the old file stays until a restart replays it
            raise
        if old[0] is not None and old[1] is not None:
            _drop(old[0], old[1])
        with self._done:
            self._applied += len(batch)
            self._done.notify_all()

    def _recover(self) -> None:
        assert self.directory is not None
        for path in sorted(self.directory.glob(self._pattern)):
            fd = os.open(path, os.O_RDONLY)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process's journal
                ops = []
                for raw in path.read_bytes().splitlines():
                    with contextlib.suppress(ValueError):
                        ops.append(json.loads(raw))  # a line torn by a power cut is skipped
                if ops:
                    apply(self.store, ops)
                path.unlink()
            finally:
                os.close(fd)


def apply(store: AccessStore, ops: list[dict[str, Any]]) -> None:
    """Journal operations in order, in one transaction; a reservation already stored is kept."""
    with store.transaction():
        for op in ops:
            if op["op"] == "reserve":
                store.insert_reservation(request_id=op["request_id"], key_id=op["key_id"], team=op["team"],
                                         ts=op["ts"], usd=op["usd"], j=op["j"])
            else:
                store.update_settlement(request_id=op["request_id"], usd=op["usd"], j=op["j"],
                                        j_unknown=op["j_unknown"])


def _drop(fd: int, path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
    os.close(fd)
