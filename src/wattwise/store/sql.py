"""The trace store over SQL: SQLite (WAL) by default, PostgreSQL by URL.

Usage::

    store = open_store("sqlite:///wattwise.db")      # or "postgresql://127.0.0.1/test"
    store.insert([record])
    rows = store.fetch(since=time.time() - 3600)
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wattwise.exceptions import StoreError
from wattwise.store.migrations import apply_migrations
from wattwise.store.records import COLUMNS, TraceRecord

# Rows per INSERT statement: 27 columns × 512 rows stays under SQLite's 32,766 bound parameters.
INSERT_CHUNK = 512


class TraceStore:
    """A connection factory plus the few queries the gateway and reports need.

    One connection per thread: the writer thread and readers never share one.
    """

    def __init__(self, *, url: str) -> None:
        self.url = url
        self.dialect = "postgresql" if url.startswith(("postgresql://", "postgres://")) else "sqlite"
        self._mark = "%s" if self.dialect == "postgresql" else "?"
        self._local = threading.local()
        self._memory = uuid.uuid4().hex  # names this store's in-memory SQLite database
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        if self.dialect == "postgresql":
            import psycopg

            # Autocommit: a read must not leave a transaction open (it would hold table locks).
            return psycopg.connect(self.url, autocommit=True)
        path = self.url.removeprefix("sqlite:///") if self.url != "sqlite://" else ":memory:"
        if path == ":memory:":
            # One database for all of this store's threads (a plain ":memory:" is one per connection,
            # and the writer thread's rows went to a database without tables); it lives while they do.
            conn = sqlite3.connect(f"file:wattwise-{self._memory}?mode=memory&cache=shared", uri=True,
                                   check_same_thread=False, timeout=30)
            return conn
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @property
    def conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._connect()
            except Exception as exc:
                raise StoreError(f"cannot open trace store {self.url}: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def migrate(self) -> list[str]:
        return apply_migrations(self.conn, dialect=self.dialect)

    def insert(self, records: Sequence[TraceRecord]) -> None:
        """Insert rows with one multi-row statement per chunk, all or none; an id already stored is skipped.

        One statement per chunk, not one per row: the database call releases the GIL, and a writer
        thread that has to win the GIL back from a busy event loop for every row falls behind.
        Skipping a stored id (``ON CONFLICT (id) DO NOTHING``) makes replaying a journal idempotent.
        One row the database refuses fails the whole call: :class:`~wattwise.store.writer.TraceWriter`
        then cleans or cuts down that row so it cannot take the others with it.
        """
        if not records:
            return
        conn = self.conn
        row = "(" + ", ".join([self._mark] * len(COLUMNS)) + ")"
        head = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES "
        try:
            if self.dialect == "postgresql":
                with conn.transaction():
                    self._insert_chunks(conn.cursor(), head, row, records)
            else:
                self._insert_chunks(conn.cursor(), head, row, records)
                conn.commit()
        except Exception as exc:
            self._after_failure(conn)
            raise StoreError(f"trace insert failed: {exc}") from exc

    def _after_failure(self, conn: Any) -> None:
        """Roll back (SQLite), or forget a closed PostgreSQL connection so the next call reconnects."""
        if self.dialect == "sqlite":
            conn.rollback()
        elif conn.closed:
            self._local.conn = None
            with self._lock:
                self._all.remove(conn)

    @staticmethod
    def _insert_chunks(cur: Any, head: str, row: str, records: Sequence[TraceRecord]) -> None:
        # Chunks of power-of-two sizes: a handful of distinct statements for the driver's
        # statement cache instead of one per batch size.
        start = 0
        while start < len(records):
            size = min(INSERT_CHUNK, 1 << ((len(records) - start).bit_length() - 1))
            chunk = records[start:start + size]
            cur.execute(head + ", ".join([row] * size) + " ON CONFLICT (id) DO NOTHING",
                        [v for r in chunk for v in r.as_tuple()])
            start += size

    def fetch(self, *, since: float | None = None, until: float | None = None) -> list[TraceRecord]:
        clauses, args = [], []
        if since is not None:
            clauses.append(f"ts >= {self._mark}")
            args.append(since)
        if until is not None:
            clauses.append(f"ts < {self._mark}")
            args.append(until)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        cur = self.conn.cursor()
        cur.execute(f"SELECT {', '.join(COLUMNS)} FROM requests{where} ORDER BY ts", args)
        return [_record(row) for row in cur.fetchall()]

    def get(self, request_id: str) -> TraceRecord | None:
        cur = self.conn.cursor()
        cur.execute(f"SELECT {', '.join(COLUMNS)} FROM requests WHERE id = {self._mark}", (request_id,))
        row = cur.fetchone()
        return _record(row) if row else None

    def set_score(self, request_id: str, score: float) -> bool:
        cur = self.conn.cursor()
        cur.execute(f"UPDATE requests SET score = {self._mark} WHERE id = {self._mark}", (score, request_id))
        if self.dialect == "sqlite":
            self.conn.commit()
        return bool(cur.rowcount)

    def count(self) -> int:
        cur = self.conn.cursor()
        cur.execute("SELECT COUNT(*) FROM requests")
        return int(cur.fetchone()[0])

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


def _record(row: Sequence[Any]) -> TraceRecord:
    record = TraceRecord(**dict(zip(COLUMNS, row, strict=True)))
    record.stream = bool(record.stream)
    return record


def open_store(url: str) -> TraceStore:
    """Open a store by URL and bring its schema up to date."""
    store = TraceStore(url=url)
    store.migrate()
    return store


@contextmanager
def opened(url: str) -> Iterator[TraceStore]:
    store = open_store(url)
    try:
        yield store
    finally:
        store.close()
