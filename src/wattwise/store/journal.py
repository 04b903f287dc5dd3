"""A write-ahead journal for trace rows, so a crash (``kill -9``) loses no answered request.

:class:`~wattwise.store.writer.TraceWriter` appends each record here, one JSON line, before it
returns; the line is in the operating system's page cache once ``os.write`` returns, so it outlives
the process (``fsync=True`` also outlives a power cut, at a disk flush per row). Lines go to the
current *segment*, a file of this process only, held with ``fcntl.flock``. The writer rotates to a
new segment about once a second and deletes an old one once every row in it is committed.

At start, :func:`orphans` finds segments nobody holds (their process died), and the writer stores
their rows again (an id already stored is skipped) and deletes them. Replicas may share one
directory: a live process's segments are locked, so nobody else touches them. Each segment names
its store on its first line; a segment for another store is left alone.

Usage::

    journal = Journal(directory=Path("traces.db.wattwise-journal"), store_key="sqlite:///traces.db")
    journal.open()
    segment = journal.append(record)       # before answering the request
    journal.settle(segment, 1)             # once the row is committed
    journal.close()

    for orphan in orphans(Path("traces.db.wattwise-journal"), store_key="sqlite:///traces.db"):
        with orphan:
            store.insert(orphan.records)
            orphan.discard()
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from wattwise.store.records import COLUMNS, TraceRecord

log = logging.getLogger(__name__)
SUFFIX = ".journal"
VERSION = 1


def default_directory(url: str) -> Path | None:
    """Beside the SQLite file (``traces.db`` → ``traces.db.wattwise-journal``), ``./wattwise-journal``
    for PostgreSQL, none for an in-memory SQLite store (nothing in it outlives the process anyway).

    Usage::

        default_directory("sqlite:///data/traces.db")   # Path("data/traces.db.wattwise-journal")
    """
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite://").removeprefix("/")
        return None if path in ("", ":memory:") else Path(path + ".wattwise-journal")
    return Path("wattwise-journal")


def store_key(url: str) -> str:
    """The store's URL without its password: written into each segment, compared on recovery."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1@", url)


def encode(record: TraceRecord) -> bytes:
    """One line of ASCII JSON: lone surrogates and NUL travel as escapes and come back unchanged."""
    # json.dumps with default arguments reuses one C encoder: half the cost of passing separators.
    return (json.dumps({name: getattr(record, name) for name in COLUMNS}) + "\n").encode()


def decode(line: bytes) -> TraceRecord:
    """The record on one journal line (unknown keys, from a newer version, are ignored)."""
    data = json.loads(line)
    return TraceRecord(**{name: data[name] for name in COLUMNS if name in data})


class Segment:
    """One journal file of this process, locked while open."""

    def __init__(self, *, directory: Path, header: bytes, fsync: bool) -> None:
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        temp = directory / (name + ".tmp")
        self.path = directory / (name + SUFFIX)
        self.fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        # Locked before it gets the name recovery looks for, so no one can take it for a dead one's.
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(self.fd, header)
        os.rename(temp, self.path)
        if fsync:
            os.fsync(self.fd)
            _fsync_dir(directory)
        self.born = time.monotonic()
        self.lines = 0
        self.bytes = 0
        self.pending = 0
        self.kept = False
        self.retired = False

    def finish(self) -> None:
        """Delete the file, unless a row in it was not committed (then a later start stores it)."""
        if not self.kept:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)  # releases the lock


class Journal:
    """This process's segments: append before answering, settle after committing, rotate between.

    ``rotate_s``/``rotate_bytes``: how old or large the current segment grows before the next
    :meth:`rotate` starts a new one. Thread-safe: the event loop appends while the writer settles.
    """

    def __init__(self, *, directory: Path, store_key: str, fsync: bool = False, rotate_s: float = 1.0,
                 rotate_bytes: int = 8 << 20) -> None:
        self.directory = directory
        self.fsync = fsync
        self.rotate_s = rotate_s
        self.rotate_bytes = rotate_bytes
        self._header = (json.dumps({"wattwise_journal": VERSION, "store": store_key, "pid": os.getpid()})
                        + "\n").encode()
        self._lock = threading.Lock()
        self._current: Segment | None = None

    def open(self) -> None:
        """Create the directory and this process's first segment (again after :meth:`close`)."""
        with self._lock:
            self._open()

    def _open(self) -> Segment:
        if self._current is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._current = self._segment()
        return self._current

    def _segment(self) -> Segment:
        return Segment(directory=self.directory, header=self._header, fsync=self.fsync)

    def append(self, record: TraceRecord) -> Segment:
        """Write the record's line; once this returns, a crash of this process cannot lose it."""
        line = encode(record)
        with self._lock:
            segment = self._open()  # a row submitted after close still waits here for the next start
            os.write(segment.fd, line)
            if self.fsync:
                os.fsync(segment.fd)
            segment.lines += 1
            segment.bytes += len(line)
            segment.pending += 1
        return segment

    def rotate(self) -> None:
        """Start a new segment if the current one is old or large enough, and retire the old one."""
        with self._lock:
            old = self._current
            young = time.monotonic() - old.born < self.rotate_s if old else True
            if old is None or not old.lines or (young and old.bytes < self.rotate_bytes):
                return
            self._current = self._segment()
            self._retire(old)

    def settle(self, segment: Segment, count: int, *, kept: bool = False) -> None:
        """``count`` rows of ``segment`` are done: committed, or (``kept``) given up for a later start."""
        with self._lock:
            segment.pending -= count
            segment.kept |= kept
            if segment.retired and segment.pending == 0:
                segment.finish()

    def _retire(self, segment: Segment) -> None:
        segment.retired = True
        if segment.pending == 0:
            segment.finish()

    def close(self) -> None:
        """Retire the current segment; one with rows still pending stays on disk for the next start."""
        with self._lock:
            segment, self._current = self._current, None
            if segment is None:
                return
            segment.kept |= segment.pending > 0
            segment.pending = 0
            self._retire(segment)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Orphan:
    """A segment left by a dead process, locked by us while we store its rows.

    ``records``: its rows, in order; ``store``: the store key in its header (``None``: unreadable);
    ``torn``: lines that did not parse (a power cut mid-line, without ``fsync``).
    """

    def __init__(self, *, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.records: list[TraceRecord] = []
        self.store: str | None = None
        self.torn = 0
        self._read()

    def _read(self) -> None:
        with open(self.fd, "rb", closefd=False) as f:
            lines = f.read().split(b"\n")
        try:
            self.store = str(json.loads(lines[0])["store"])
        except (ValueError, KeyError, TypeError):
            return
        for line in lines[1:]:
            if not line:
                continue
            try:
                self.records.append(decode(line))
            except (ValueError, TypeError):
                self.torn += 1

    def discard(self) -> None:
        """Delete the file: every row in it is stored."""
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Orphan:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        os.close(self.fd)


def orphans(directory: Path, *, store_key: str) -> Iterator[Orphan]:
    """Segments in ``directory`` for this store whose process is gone (we could take their lock).

    A segment for another store is logged and left for a gateway on that store.
    """
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*" + SUFFIX)):
        fd = _take(path)
        if fd is None:
            continue
        orphan = Orphan(path=path, fd=fd)
        if orphan.store != store_key:
            log.warning("journal %s is for store %s, not this one; left alone", path, orphan.store)
            os.close(fd)
            continue
        yield orphan


def _take(path: Path) -> int | None:
    """An fd holding the segment's lock, or ``None`` if its process lives (or it just went away)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
