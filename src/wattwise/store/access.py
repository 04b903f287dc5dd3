"""Keys, spend and the audit log in the trace store (tables from migration ``0004_access``).

* ``api_keys``: one row per key (its keyed hash, never the key), settings as JSON;
* ``spend``: one row per governed request: written at its worst case when the budget is reserved
  (``state = 'reserved'``), rewritten with the metered figure when it settles (``'settled'``). A
  row left ``reserved`` by a process killed mid-request keeps counting at its worst case, so a
  crash can only make spend look higher, never lower;
* ``audit_log``: every admin action (create, update, revoke), who did it and when.

Every method blocks on the database: call it from a worker thread in async code.

Usage::

    access = AccessStore(store=open_store("sqlite:///wattwise.db"))
    access.add_key(record, actor="cli")
    access.reserve_spend(request_id="req_1", key_id="key_1", team=None, ts=now, usd=0.02, j=40.0)
    access.settle_spend(request_id="req_1", usd=0.004, j=9.5)
    access.spent(key_id="key_1", since=period_start)      # (usd, j)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from wattwise.access.keys import KeyRecord, KeySettings
from wattwise.exceptions import StoreError
from wattwise.store.sql import TraceStore

KEY_COLUMNS = ("id", "name", "hash", "prefix", "team", "settings", "created_at", "expires_at", "revoked_at")


class AccessStore:
    """Keys, spend rows and audit rows over a :class:`TraceStore`'s connections (one per thread)."""

    def __init__(self, *, store: TraceStore) -> None:
        self.store = store
        self.postgresql = store.dialect == "postgresql"

    def _run(self, sql: str, args: Sequence[Any] = ()) -> Any:
        cur = self.store.conn.cursor()
        try:
            cur.execute(sql.replace("?", "%s") if self.postgresql else sql, tuple(args))
        except Exception as exc:
            self._rollback()
            raise StoreError(f"access store: {exc}") from exc
        return cur

    def _rollback(self) -> None:
        if not self.postgresql:
            self.store.conn.rollback()

    def _commit(self) -> None:
        if not self.postgresql:
            self.store.conn.commit()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        conn = self.store.conn
        if self.postgresql:
            with conn.transaction():
                yield
            return
        try:
            yield
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    # -- keys ------------------------------------------------------------------------------------

    def add_key(self, record: KeyRecord, *, actor: str, now: float) -> None:
        with self._tx():
            self._run(f"INSERT INTO api_keys ({', '.join(KEY_COLUMNS)}) VALUES ({', '.join('?' * len(KEY_COLUMNS))})",
                      _key_row(record))
            self._audit(actor=actor, action="create", key_id=record.id, detail=record.public(), now=now)

    def get_key(self, key_id: str) -> KeyRecord | None:
        row = self._run(f"SELECT {', '.join(KEY_COLUMNS)} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return _key(row) if row else None

    def keys(self) -> list[KeyRecord]:
        rows = self._run(f"SELECT {', '.join(KEY_COLUMNS)} FROM api_keys ORDER BY created_at, id").fetchall()
        return [_key(row) for row in rows]

    def update_key(self, key_id: str, *, actor: str, now: float, name: str | None = None,
                   team: str | None = None, clear_team: bool = False, settings: KeySettings | None = None,
                   expires_at: float | None = None) -> KeyRecord | None:
        """Change the fields given; ``None`` if there is no such key."""
        with self._tx():
            old = self.get_key(key_id)
            if old is None:
                return None
            new = KeyRecord(id=old.id, name=name or old.name, hash=old.hash, prefix=old.prefix,
                            team=None if clear_team else (team or old.team), settings=settings or old.settings,
                            created_at=old.created_at, expires_at=expires_at or old.expires_at,
                            revoked_at=old.revoked_at)
            self._run("UPDATE api_keys SET name = ?, team = ?, settings = ?, expires_at = ? WHERE id = ?",
                      (new.name, new.team, new.settings.model_dump_json(), new.expires_at, key_id))
            self._audit(actor=actor, action="update", key_id=key_id, detail=new.public(), now=now)
        return new

    def revoke_key(self, key_id: str, *, actor: str, now: float) -> KeyRecord | None:
        with self._tx():
            old = self.get_key(key_id)
            if old is None:
                return None
            if old.revoked_at is None:
                self._run("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (now, key_id))
            self._audit(actor=actor, action="revoke", key_id=key_id, detail={}, now=now)
        return self.get_key(key_id)

    def key_count(self) -> int:
        return int(self._run("SELECT COUNT(*) FROM api_keys").fetchone()[0])

    # -- audit -----------------------------------------------------------------------------------

    def _audit(self, *, actor: str, action: str, key_id: str | None, detail: dict[str, Any], now: float) -> None:
        self._run("INSERT INTO audit_log (id, ts, actor, action, key_id, detail) VALUES (?, ?, ?, ?, ?, ?)",
                  ("aud_" + uuid.uuid4().hex, now, actor, action, key_id, json.dumps(detail, default=str)))

    def note(self, *, actor: str, action: str, detail: dict[str, Any], now: float) -> None:
        """An admin action that is not about one key (a cache purge), in the audit log."""
        with self._tx():
            self._audit(actor=actor, action=action, key_id=None, detail=detail, now=now)

    def audit_log(self, *, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._run("SELECT ts, actor, action, key_id, detail FROM audit_log ORDER BY ts DESC LIMIT ?",
                         (limit,)).fetchall()
        return [{"ts": r[0], "actor": r[1], "action": r[2], "key_id": r[3], "detail": json.loads(r[4])}
                for r in rows]

    # -- spend -----------------------------------------------------------------------------------

    def reserve_spend(self, *, request_id: str, key_id: str, team: str | None, ts: float, usd: float,
                      j: float) -> None:
        """The request's worst case, durable before it runs."""
        self._run("INSERT INTO spend (request_id, key_id, team, ts, state, usd, j, j_unknown) "
                  "VALUES (?, ?, ?, ?, 'reserved', ?, ?, ?)", (request_id, key_id, team, ts, usd, j, False))
        self._commit()

    def settle_spend(self, *, request_id: str, usd: float, j: float, j_unknown: bool = False) -> None:
        """The metered figure replaces the worst case."""
        self._run("UPDATE spend SET state = 'settled', usd = ?, j = ?, j_unknown = ? WHERE request_id = ?",
                  (usd, j, j_unknown, request_id))
        self._commit()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Several writes committed together (the spend ledger's batches)."""
        with self._tx():
            yield

    def insert_reservation(self, *, request_id: str, key_id: str, team: str | None, ts: float, usd: float,
                           j: float) -> None:
        """A worst case, inside a transaction; one already stored (a replayed journal) is kept."""
        self._run("INSERT INTO spend (request_id, key_id, team, ts, state, usd, j, j_unknown) "
                  "VALUES (?, ?, ?, ?, 'reserved', ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
                  (request_id, key_id, team, ts, usd, j, False))

    def update_settlement(self, *, request_id: str, usd: float, j: float, j_unknown: bool) -> None:
        """The metered figure, inside a transaction."""
        self._run("UPDATE spend SET state = 'settled', usd = ?, j = ?, j_unknown = ? WHERE request_id = ?",
                  (usd, j, j_unknown, request_id))

    def spent(self, *, key_id: str | None = None, team: str | None = None, since: float | None = None
              ) -> tuple[float, float]:
        """``(usd, j)`` a key's or a team's requests spent since ``since`` (reserved rows at worst case)."""
        column, value = ("key_id", key_id) if key_id is not None else ("team", team)
        sql = f"SELECT COALESCE(SUM(usd), 0), COALESCE(SUM(j), 0) FROM spend WHERE {column} = ?"
        args: list[Any] = [value]
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        row = self._run(sql, args).fetchone()
        return float(row[0]), float(row[1])


def _key_row(record: KeyRecord) -> tuple[Any, ...]:
    return (record.id, record.name, record.hash, record.prefix, record.team, record.settings.model_dump_json(),
            record.created_at, record.expires_at, record.revoked_at)


def _key(row: Sequence[Any]) -> KeyRecord:
    data = dict(zip(KEY_COLUMNS, row, strict=True))
    data["settings"] = KeySettings.model_validate_json(data["settings"] or "{}")
    return KeyRecord(**data)
