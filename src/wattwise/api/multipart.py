"""An incremental ``multipart/form-data`` parser: bytes in as they arrive, events out, bounded memory.

It holds at most one network chunk plus a boundary's length of body, so a 100 MB upload never sits
in memory (Starlette's own form parser needs ``python-multipart``, which wattwise does not depend on).

Usage::

    parser = MultipartParser(boundary_of(request.headers["content-type"]))
    async for chunk in request.stream():
        for event in parser.feed(chunk):
            ...                       # PartStart(name, filename), then PartData(bytes)..., then PartEnd()
    parser.close()                    # InvalidRequest if the body stopped before the closing boundary
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser

from wattwise.exceptions import InvalidRequest

MAX_HEADER_BYTES = 16_384


@dataclass(frozen=True, kw_only=True)
class PartStart:
    """A part's headers: its form field ``name`` and, for a file, its ``filename``."""

    name: str
    filename: str | None


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` content type, or :class:`InvalidRequest`.

    >>> boundary_of('multipart/form-data; boundary="abc"')
    b'abc'
    """
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str) or not boundary:
        raise InvalidRequest("the body must be multipart/form-data with a boundary", param="file")
    if not boundary.isascii() or len(boundary) > 200:
        raise InvalidRequest("the multipart boundary must be ASCII, at most 200 characters", param="file")
    return boundary.encode()


class MultipartParser:
    """Feed it the body in chunks; it returns the events each chunk completes.

    >>> p = MultipartParser(b"b")
    >>> p.feed(b'--b\\r\\nContent-Disposition: form-data; name="purpose"\\r\\n\\r\\nbatch\\r\\n--b--\\r\\n')
    [PartStart(name='purpose', filename=None), PartData(data=b'batch'), PartEnd()]
    """

    def __init__(self, boundary: bytes) -> None:
        self.delimiter = b"\r\n--" + boundary
        # A leading CRLF makes the first boundary look like every later one.
        self.buf = bytearray(b"\r\n")
        self.state = "preamble"

    def feed(self, data: bytes) -> list[Event]:
        self.buf += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        if self.state != "done":
            raise InvalidRequest("the multipart body ended before its closing boundary", param="file")

    def _step(self, events: list[Event]) -> bool:
        """Advance one state if the buffer allows; False when more bytes are needed."""
        if self.state in ("preamble", "body"):
            return self._to_delimiter(events)
        if self.state == "delimiter":
            return self._after_delimiter()
        if self.state == "headers":
            return self._headers(events)
        self.buf.clear()  # the epilogue is ignored
        return False

    def _to_delimiter(self, events: list[Event]) -> bool:
        at = self.buf.find(self.delimiter)
        if at < 0:
            # Keep a tail that could be the start of a delimiter split across chunks.
            cut = len(self.buf) - (len(self.delimiter) - 1)
            if cut > 0:
                if self.state == "body":
                    events.append(PartData(bytes(self.buf[:cut])))
                del self.buf[:cut]
            return False
        if self.state == "body":
            if at:
                events.append(PartData(bytes(self.buf[:at])))
            events.append(PartEnd())
        del self.buf[:at + len(self.delimiter)]
        self.state = "delimiter"
        return True

    def _after_delimiter(self) -> bool:
        if self.buf.startswith(b"--"):
            self.state = "done"
            return True
        end = self.buf.find(b"\r\n")
        if end < 0:
            if len(self.buf) > 1024:
                raise InvalidRequest("malformed multipart boundary line", param="file")
            return False
        if self.buf[:end].strip(b" \t"):  # only transport padding may follow a boundary
            raise InvalidRequest("malformed multipart boundary line", param="file")
        del self.buf[:end + 2]
        self.state = "headers"
        return True

    def _headers(self, events: list[Event]) -> bool:
        end = 0 if self.buf.startswith(b"\r\n") else self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEADER_BYTES:
                raise InvalidRequest(f"a multipart part's headers exceed {MAX_HEADER_BYTES} bytes", param="file")
            return False
        events.append(_part_start(bytes(self.buf[:end])))
        del self.buf[:end + (2 if end == 0 else 4)]
        self.state = "body"
        return True


def _part_start(head: bytes) -> PartStart:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("a multipart part's headers are not valid UTF-8", param="file") from None
    headers = HeaderParser().parsestr(text)
    name = headers.get_param("name", header="content-disposition")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("a multipart part has no Content-Disposition name", param="file")
    filename = headers.get_filename()
    if any(ord(c) < 32 or ord(c) == 127 for c in name + (filename or "")):
        raise InvalidRequest("a multipart field name or filename contains control characters", param="file")
    return PartStart(name=name, filename=filename)
