"""The Batch API's durable queue in the trace store: files, batches, and one row per input line.

A line moves ``pending → running → done | failed``, or to ``cancelled`` / ``expired``. A runner
claims lines with a lease (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: ``BEGIN IMMEDIATE``);
each claim bumps the line's ``attempts``. A result is accepted only from the claim that still holds
the line (same owner, same attempt, still running), and the result and the new state are written by
one statement. So each line gets exactly one result, even when a lease ran out (its replica was
killed or stalled) and another runner took the line over.

Usage::

    queue = BatchStore(store=open_store("sqlite:///wattwise.db"))
    upload = queue.add_file(purpose="batch", filename="in.jsonl", content=data, now=time.time())
    batch = queue.add_batch(input_file_id=upload.id, endpoint="/v1/chat/completions",
                            completion_window="24h", metadata=None, lines=lines, now=time.time())
    for claim in queue.claim(owner="replica-1", limit=4, lease_s=30, now=time.time()):
        queue.finish(claim, owner="replica-1", state="done", response={...}, request_id="req_1",
                     now=time.time())
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import IO, Any

from wattwise.store.query import Query, Transactional
from wattwise.store.sql import TraceStore

WINDOWS_S = {"24h": 86400.0}
ERROR_STATES = ("failed", "expired", "cancelled")
EXPIRED = {"code": "batch_expired", "message": "the batch's completion window ended before this line ran"}
CANCELLED = {"code": "batch_cancelled", "message": "the batch was cancelled before this line ran"}
CHUNK_BYTES = 1 << 20  # a file is stored, and read back, in rows of this size
FINISHED = ("completed", "cancelled", "expired", "failed")


def plausible_id(value: object) -> bool:
    """Whether ``value`` could be an id this store made: printable ASCII, so a NUL or a lone surrogate
    (which PostgreSQL and SQLite reject in text) never reaches a query; anything else is unknown."""
    return isinstance(value, str) and 0 < len(value) <= 256 and value.isascii() and value.isprintable()


@dataclass(frozen=True, kw_only=True)
class FileRow:
    """An uploaded input file, or a batch's output or error file (``kind``)."""

    id: str
    purpose: str
    filename: str
    bytes: int
    created_at: float
    kind: str
    batch_id: str | None = None
    expires_at: float | None = None  # the file's own expiry; the retention period applies otherwise
    key_id: str | None = None  # the API key that owns it (None: made with no keys configured)


@dataclass(frozen=True, kw_only=True)
class BatchRow:
    """A batch as stored; timestamps are epoch seconds, ``metadata`` and ``errors`` JSON text."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    status: str
    created_at: float
    expires_at: float
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    metadata: str | None = None
    errors: str | None = None
    key_id: str | None = None  # the API key that owns it (None: made with no keys configured)


@dataclass(frozen=True, kw_only=True)
class NewLine:
    """One input line: a valid request body (JSON text), or the error that fails it at once.

    ``model`` is the model the line asks for (kept so a runner can claim by model).
    """

    line_no: int
    custom_id: str | None
    body: str | None
    model: str | None = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class Claim:
    """A line this runner holds; ``attempt`` fences its result against a later claim."""

    batch_id: str
    line_no: int
    custom_id: str | None
    body: str
    attempt: int


FILE_COLUMNS = tuple(f.name for f in fields(FileRow))
BATCH_COLUMNS = tuple(f.name for f in fields(BatchRow))


class BatchStore(Transactional):
    """Files, batches and their lines over a :class:`TraceStore`'s connections (one per thread).

    Every method blocks on the database: call it from a worker thread in async code.

    Ownership: a file or batch made with ``key_id`` belongs to that key. Readers given ``key_id`` see
    only that key's rows (anything else is "no such file"); ``key_id=None`` (no keys configured) sees
    all. ``keep_content=False`` (``[store] store_content = false``) keeps prompts and answers only as
    long as the queue needs them: a line's request is dropped when the line finishes, its response
    once the output file is written.
    """

    label = "batch queue"

    def __init__(self, *, store: TraceStore, keep_content: bool = True) -> None:
        super().__init__(store=store)
        self.keep_content = keep_content
        self._next_purge = 0.0

    # -- files -----------------------------------------------------------------------------------

    def add_file(self, *, purpose: str, filename: str, content: bytes | IO[bytes], now: float,
                 expires_at: float | None = None, key_id: str | None = None) -> FileRow:
        """Store an upload; ``content`` may be an open file, read and written ``CHUNK_BYTES`` at a time."""
        stream = _chunks(content)
        with self._tx() as q:
            file_id, size = "file-" + uuid.uuid4().hex[:24], 0
            for seq, chunk in enumerate(stream):
                q.run("INSERT INTO batch_file_chunks (file_id, seq, data) VALUES (?, ?, ?)", (file_id, seq, chunk))
                size += len(chunk)
            row = FileRow(id=file_id, purpose=purpose, filename=filename, bytes=size, created_at=now,
                          kind="upload", expires_at=expires_at, key_id=key_id)
            _insert_row(q, row)
        return row

    def get_file(self, file_id: str, *, key_id: str | None = None) -> FileRow | None:
        if not plausible_id(file_id):
            return None
        mine, args = _owned(key_id)
        row = self._query().run(f"SELECT {', '.join(FILE_COLUMNS)} FROM batch_files WHERE id = ?{mine}",
                                (file_id, *args)).one()
        return _file(row) if row else None

    def file_content(self, file_id: str) -> bytes | None:
        """The whole file in memory (small files, tests); :meth:`file_chunks` streams it."""
        chunks = self.file_chunks(file_id)
        return None if chunks is None else b"".join(chunks)

    def file_chunks(self, file_id: str, *, key_id: str | None = None) -> Iterator[bytes] | None:
        """The file's bytes one stored chunk at a time (one query each), or None if there is no such file."""
        if not plausible_id(file_id):
            return None
        mine, args = _owned(key_id)
        row = self._query().run(f"SELECT length(content) FROM batch_files WHERE id = ?{mine}",
                                (file_id, *args)).one()
        return None if row is None else self._read_chunks(file_id, legacy=bool(row[0]))

    def _read_chunks(self, file_id: str, *, legacy: bool) -> Iterator[bytes]:
        if legacy:  # written before 0003_file_chunks, in one row
            row = self._query().run("SELECT content FROM batch_files WHERE id = ?", (file_id,)).one()
            if row:
                yield bytes(row[0])
        seq = 0
        while row := self._query().run("SELECT data FROM batch_file_chunks WHERE file_id = ? AND seq = ?",
                                       (file_id, seq)).one():
            yield bytes(row[0])
            seq += 1

    def list_files(self, *, limit: int, after: str | None = None, order: str = "desc",
                   purpose: str | None = None, key_id: str | None = None) -> list[FileRow]:
        """A page of files by ``created_at`` (``order`` ``asc`` or ``desc``), after the file ``after``."""
        if after is not None and not plausible_id(after):
            return []
        op, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        where, args = [], []
        if after is not None:
            where.append(f"(created_at, id) {op} (SELECT created_at, id FROM batch_files WHERE id = ?)")
            args.append(after)
        if purpose is not None:
            where.append("purpose = ?")
            args.append(purpose)
        if key_id is not None:
            where.append("key_id = ?")
            args.append(key_id)
        sql = (f"SELECT {', '.join(FILE_COLUMNS)} FROM batch_files"
               + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY created_at {direction}, id {direction} LIMIT ?")
        return [_file(row) for row in self._query().run(sql, (*args, limit)).all()]

    def delete_file(self, file_id: str, *, key_id: str | None = None) -> bool:
        """Delete a file and its content; False if there was none. A batch made from it keeps running:
        its lines were copied into the queue when it was created."""
        if not plausible_id(file_id):
            return False
        mine, args = _owned(key_id)
        with self._tx() as q:
            if q.run(f"DELETE FROM batch_files WHERE id = ?{mine}", (file_id, *args)).rowcount != 1:
                return False
            q.run("DELETE FROM batch_file_chunks WHERE file_id = ?", (file_id,))
            return True

    def purge_expired(self, *, now: float, retention_s: float | None, every_s: float = 0.0) -> list[str]:
        """Delete files past their expiry (their own ``expires_at``, else ``created_at + retention_s``),
        and drop the request and response text of batches finished more than ``retention_s`` ago
        (their counts stay). ``retention_s=None`` keeps everything without an explicit expiry.

        With ``every_s``, a call within ``every_s`` of the last one that ran does nothing (the runner
        calls it on every tick)."""
        if now < self._next_purge:
            return []
        self._next_purge = now + every_s
        if retention_s is None:
            due = self._query().run("SELECT id FROM batch_files WHERE expires_at <= ?", (now,)).all()
        else:
            due = self._query().run("SELECT id FROM batch_files WHERE COALESCE(expires_at, created_at + ?) <= ?",
                                    (retention_s, now)).all()
        deleted = [file_id for (file_id,) in due if self.delete_file(file_id)]
        if retention_s is not None:
            with self._tx() as q:
                q.run("UPDATE batch_lines SET body = NULL, response = NULL WHERE (body IS NOT NULL OR response "
                      "IS NOT NULL) AND batch_id IN (SELECT id FROM batches WHERE status IN "
                      f"({', '.join('?' * len(FINISHED))}) AND COALESCE(completed_at, cancelled_at, expired_at, "
                      "failed_at) <= ?)", (*FINISHED, now - retention_s))
        return deleted

    # -- batches ---------------------------------------------------------------------------------

    def add_batch(self, *, input_file_id: str, endpoint: str, completion_window: str,
                  metadata: dict[str, Any] | None, lines: Sequence[NewLine], now: float,
                  key_id: str | None = None) -> BatchRow:
        """Queue a batch and all its lines in one transaction; invalid lines are failed at once."""
        errors = [{**line.error, "line": line.line_no} for line in lines if line.error][:1000]
        batch = BatchRow(id="batch_" + uuid.uuid4().hex, input_file_id=input_file_id, endpoint=endpoint,
                         completion_window=completion_window, status="in_progress", created_at=now,
                         expires_at=now + WINDOWS_S[completion_window], in_progress_at=now,
                         metadata=json.dumps(metadata) if metadata else None,
                         errors=json.dumps({"object": "list", "data": errors}) if errors else None, key_id=key_id)
        rows = [(batch.id, line.line_no, line.custom_id, line.model, line.body,
                 "failed" if line.error else "pending",
                 json.dumps(line.error) if line.error else None, now if line.error else None)
                for line in lines]
        with self._tx() as q:
            values = tuple(getattr(batch, name) for name in BATCH_COLUMNS)
            q.run(f"INSERT INTO batches ({', '.join(BATCH_COLUMNS)}) VALUES ({', '.join('?' * len(values))})",
                  values)
            q.many("INSERT INTO batch_lines (batch_id, line_no, custom_id, model, body, state, error, "
                   "finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return batch

    def get_batch(self, batch_id: str, *, key_id: str | None = None) -> BatchRow | None:
        if not plausible_id(batch_id):
            return None
        mine, args = _owned(key_id)
        row = self._query().run(f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches WHERE id = ?{mine}",
                                (batch_id, *args)).one()
        return _batch(row) if row else None

    def list_batches(self, *, limit: int, after: str | None = None, key_id: str | None = None) -> list[BatchRow]:
        """Newest first; ``after`` is the id of the last batch of the previous page."""
        if after is not None and not plausible_id(after):
            return []
        where: list[str] = []
        args: list[Any] = []
        if after:
            where.append("(created_at, id) < (SELECT created_at, id FROM batches WHERE id = ?)")
            args.append(after)
        if key_id is not None:
            where.append("key_id = ?")
            args.append(key_id)
        sql = (f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY created_at DESC, id DESC LIMIT ?")
        return [_batch(row) for row in self._query().run(sql, (*args, limit)).all()]

    def counts(self, batch_id: str) -> dict[str, int]:
        """Lines by state: ``{"pending": 3, "running": 1, "done": 10, ...}``."""
        rows = self._query().run("SELECT state, COUNT(*) FROM batch_lines WHERE batch_id = ? GROUP BY state",
                                 (batch_id,)).all()
        return {state: int(n) for state, n in rows}

    def cancel(self, batch_id: str, *, now: float, key_id: str | None = None) -> BatchRow | None:
        """Stop a batch: pending lines are cancelled now, running ones may finish. Idempotent."""
        if self.get_batch(batch_id, key_id=key_id) is None:
            return None
        with self._tx() as q:
            moved = q.run("UPDATE batches SET status = 'cancelling', cancelling_at = ? "
                          "WHERE id = ? AND status = 'in_progress'", (now, batch_id)).rowcount
            if moved:
                q.run("UPDATE batch_lines SET state = 'cancelled', error = ?, finished_at = ? "
                      "WHERE batch_id = ? AND state = 'pending'", (json.dumps(CANCELLED), now, batch_id))
        return self.get_batch(batch_id)

    # -- the runner's side -----------------------------------------------------------------------

    def claim(self, *, owner: str, limit: int, lease_s: float, now: float) -> list[Claim]:
        """Take up to ``limit`` runnable lines (pending, or running with a lapsed lease), oldest batch first."""
        lock = " FOR UPDATE OF l SKIP LOCKED" if self.postgresql else ""
        sql = ("UPDATE batch_lines SET state = 'running', owner = ?, lease_until = ?, attempts = attempts + 1 "
               "WHERE (batch_id, line_no) IN (SELECT l.batch_id, l.line_no FROM batch_lines l "
               "JOIN batches b ON b.id = l.batch_id WHERE b.status = 'in_progress' AND b.expires_at > ? "
               "AND (l.state = 'pending' OR (l.state = 'running' AND l.lease_until < ?)) "
               f"ORDER BY b.created_at, l.line_no LIMIT ?{lock}) "
               "RETURNING batch_id, line_no, custom_id, body, attempts")
        with self._tx() as q:
            rows = q.run(sql, (owner, now + lease_s, now, now, limit)).all()
        return [Claim(batch_id=b, line_no=int(n), custom_id=c, body=body, attempt=int(a))
                for b, n, c, body, a in sorted(rows, key=lambda r: (r[0], r[1]))]

    def heartbeat(self, claims: Sequence[Claim], *, owner: str, lease_until: float) -> None:
        """Extend the leases of the lines ``owner`` is still running (and no others: a line whose
        result could not be recorded must lapse, so that another runner takes it)."""
        rows = [(lease_until, c.batch_id, c.line_no, owner, c.attempt) for c in claims]
        with self._tx() as q:
            q.many("UPDATE batch_lines SET lease_until = ? WHERE batch_id = ? AND line_no = ? AND owner = ? "
                   "AND attempts = ? AND state = 'running'", rows)

    def finish(self, claim: Claim, *, owner: str, state: str, request_id: str | None, now: float,
               response: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> bool:
        """Record a line's result and its final state in one statement; False if the claim was lost."""
        body = "" if self.keep_content else "body = NULL, "
        with self._tx() as q:
            return q.run(
                f"UPDATE batch_lines SET {body}state = ?, response = ?, error = ?, request_id = ?, finished_at = ?, "
                "lease_until = NULL WHERE batch_id = ? AND line_no = ? AND owner = ? AND attempts = ? "
                "AND state = 'running'",
                (state, json.dumps(response) if response is not None else None,
                 json.dumps(error) if error is not None else None, request_id, now,
                 claim.batch_id, claim.line_no, owner, claim.attempt)).rowcount == 1

    def release(self, *, owner: str) -> int:
        """Hand back the lines ``owner`` holds (a graceful stop), so another runner takes them at once."""
        with self._tx() as q:
            return q.run("UPDATE batch_lines SET state = 'pending', lease_until = NULL "
                         "WHERE owner = ? AND state = 'running'", (owner,)).rowcount

    def expire_due(self, *, now: float) -> list[str]:
        """Batches past their window: lines not done become ``expired`` errors; the batch ``expired``."""
        due = self._query().run("SELECT id FROM batches WHERE status = 'in_progress' AND expires_at <= ?",
                                (now,)).all()
        return [batch_id for (batch_id,) in due if self._expire(batch_id, now)]

    def _expire(self, batch_id: str, now: float) -> bool:
        with self._tx() as q:
            if not q.run("UPDATE batches SET status = 'expired', finalizing_at = ?, expired_at = ? "
                         "WHERE id = ? AND status = 'in_progress' AND expires_at <= ?",
                         (now, now, batch_id, now)).rowcount:
                return False
            # A running line's late result is then fenced out by finish(): its state is no longer running.
            q.run("UPDATE batch_lines SET state = 'expired', error = ?, finished_at = ? "
                  "WHERE batch_id = ? AND state IN ('pending', 'running')", (json.dumps(EXPIRED), now, batch_id))
            _attach_files(q, batch_id, now, keep_content=self.keep_content)
        return True

    def finalize_ready(self, *, now: float) -> list[str]:
        """Close batches with no line left to run: ``completed``, or ``cancelled`` after a cancel."""
        ready = self._query().run(
            "SELECT id, status FROM batches b WHERE status IN ('in_progress', 'cancelling') AND NOT EXISTS "
            "(SELECT 1 FROM batch_lines l WHERE l.batch_id = b.id AND l.state IN ('pending', 'running'))").all()
        return [batch_id for batch_id, status in ready if self._finalize(batch_id, status, now)]

    def _finalize(self, batch_id: str, status: str, now: float) -> bool:
        final, stamp = ("cancelled", "cancelled_at") if status == "cancelling" else ("completed", "completed_at")
        with self._tx() as q:
            # Conditional: of several replicas finalizing at once, exactly one moves the batch.
            if not q.run(f"UPDATE batches SET status = ?, finalizing_at = ?, {stamp} = ? "
                         "WHERE id = ? AND status = ? AND NOT EXISTS (SELECT 1 FROM batch_lines l "
                         "WHERE l.batch_id = ? AND l.state IN ('pending', 'running'))",
                         (final, now, now, batch_id, status, batch_id)).rowcount:
                return False
            _attach_files(q, batch_id, now, keep_content=self.keep_content)
        return True


def _batch(row: Sequence[Any]) -> BatchRow:
    return BatchRow(**dict(zip(BATCH_COLUMNS, row, strict=True)))


def _file(row: Sequence[Any]) -> FileRow:
    return FileRow(**dict(zip(FILE_COLUMNS, row, strict=True)))


def _chunks(content: bytes | IO[bytes]) -> Iterator[bytes]:
    if isinstance(content, bytes):
        yield from (content[i:i + CHUNK_BYTES] for i in range(0, len(content), CHUNK_BYTES))
        return
    while chunk := content.read(CHUNK_BYTES):
        yield chunk


def _insert_row(q: Query, row: FileRow) -> None:
    """The file's row; its bytes are in ``batch_file_chunks`` (``content`` is only for files from before)."""
    values = (*(getattr(row, name) for name in FILE_COLUMNS), b"")
    q.run(f"INSERT INTO batch_files ({', '.join(FILE_COLUMNS)}, content) VALUES ({', '.join('?' * len(values))})",
          values)


def _insert_file(q: Query, row: FileRow, content: bytes) -> None:
    for seq, chunk in enumerate(_chunks(content)):
        q.run("INSERT INTO batch_file_chunks (file_id, seq, data) VALUES (?, ?, ?)", (row.id, seq, chunk))
    _insert_row(q, row)


def result_line(batch_id: str, line_no: int, custom_id: str | None, response: str | None,
                error: str | None) -> dict[str, Any]:
    """One line of an output or error file, in OpenAI's shape."""
    err = None if error is None else {**json.loads(error), "line": line_no}
    return {"id": f"batch_req_{batch_id.removeprefix('batch_')}_{line_no}", "custom_id": custom_id,
            "response": json.loads(response) if response is not None else None, "error": err}


def _owned(key_id: str | None) -> tuple[str, tuple[str, ...]]:
    """The SQL condition (and its argument) that limits a query to ``key_id``'s rows; none for None."""
    return ("", ()) if key_id is None else (" AND key_id = ?", (key_id,))


def _attach_files(q: Query, batch_id: str, now: float, *, keep_content: bool) -> None:
    """Write the output file (done lines) and the error file (the rest), in input order; both belong
    to the batch's key. Without ``keep_content`` the lines' copies of requests and answers go."""
    (key_id,) = q.run("SELECT key_id FROM batches WHERE id = ?", (batch_id,)).one()
    rows = q.run("SELECT line_no, custom_id, state, response, error FROM batch_lines WHERE batch_id = ? "
                 "ORDER BY line_no", (batch_id,)).all()
    files = {"output": [r for r in rows if r[2] == "done"], "error": [r for r in rows if r[2] in ERROR_STATES]}
    for kind, lines in files.items():
        if not lines:
            continue
        # backslashreplace: a lone surrogate that slipped into a result must not stop the batch closing.
        content = "".join(json.dumps(result_line(batch_id, int(n), c, resp, err), ensure_ascii=False) + "\n"
                          for n, c, _, resp, err in lines).encode("utf-8", "backslashreplace")
        row = FileRow(id="file-" + uuid.uuid4().hex[:24], purpose="batch_output", bytes=len(content),
                      filename=f"{batch_id}_{kind}.jsonl", created_at=now, kind=kind, batch_id=batch_id,
                      key_id=key_id)
        _insert_file(q, row, content)
        q.run(f"UPDATE batches SET {kind}_file_id = ? WHERE id = ?", (row.id, batch_id))
    if not keep_content:
        q.run("UPDATE batch_lines SET body = NULL, response = NULL WHERE batch_id = ?", (batch_id,))
