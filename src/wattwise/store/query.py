"""What the store's queue tables share: a cursor that speaks ``?`` on both dialects, and one
transaction that takes SQLite's write lock first.

Usage::

    class LabelStore(Transactional):
        label = "label store"

        def count(self) -> int:
            with self._tx() as q:
                return int(q.run("SELECT COUNT(*) FROM labels").one()[0])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from wattwise.exceptions import StoreError
from wattwise.store.sql import TraceStore


class Query:
    """A cursor that speaks ``?`` on both dialects and reports failures as :class:`StoreError`."""

    def __init__(self, cursor: Any, *, postgresql: bool, label: str) -> None:
        self.cursor = cursor
        self.postgresql = postgresql
        self.label = label

    def run(self, sql: str, args: Sequence[Any] = ()) -> Query:
        try:
            self.cursor.execute(sql.replace("?", "%s") if self.postgresql else sql, tuple(args))
        except Exception as exc:
            raise StoreError(f"{self.label}: {exc}") from exc
        return self

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        try:
            self.cursor.executemany(sql.replace("?", "%s") if self.postgresql else sql, rows)
        except Exception as exc:
            raise StoreError(f"{self.label}: {exc}") from exc

    def all(self) -> list[Any]:
        return list(self.cursor.fetchall())

    def one(self) -> Any:
        return self.cursor.fetchone()

    @property
    def rowcount(self) -> int:
        return int(self.cursor.rowcount)


class Transactional:
    """Tables over a :class:`TraceStore`'s connections (one per thread); ``label`` names them in errors."""

    label = "store"

    def __init__(self, *, store: TraceStore) -> None:
        self.store = store
        self.postgresql = store.dialect == "postgresql"

    def _query(self) -> Query:
        return Query(self.store.conn.cursor(), postgresql=self.postgresql, label=self.label)

    @contextmanager
    def _tx(self) -> Iterator[Query]:
        """One transaction; on SQLite it takes the write lock first, so claims never interleave."""
        conn = self.store.conn
        if self.postgresql:
            with conn.transaction():
                yield self._query()
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._query()
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
