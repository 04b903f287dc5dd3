"""OpenAI's ``/v1/files``: upload (streamed to a spool file, then into the store in chunks), list,
retrieve, content and delete.

An upload never sits in memory whole: the multipart body is parsed as it arrives
(:mod:`wattwise.api.multipart`), the file part goes to a temporary file, and the store copies it in
``CHUNK_BYTES`` rows. Content is streamed back the same way.

Usage::

    routes = [..., *FILE_ROUTES]

    client.files.create(file=open("in.jsonl", "rb"), purpose="batch")          # openai client
    client.files.list(purpose="batch", limit=20, order="asc")
    client.files.delete(file_id)
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from typing import IO, Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from wattwise.api.multipart import MultipartParser, PartData, PartEnd, PartStart, boundary_of
from wattwise.batch import BatchRunner
from wattwise.exceptions import InvalidRequest, NotFound, PayloadTooLarge, RequestTimeout
from wattwise.store.batch import CHUNK_BYTES, FileRow, plausible_id

PURPOSES = ("batch",)
FIELDS = ("purpose", "file", "expires_after[anchor]", "expires_after[seconds]")
MAX_FIELD_BYTES = 1024
HEADROOM_BYTES = 65_536  # what a multipart body may carry beyond the file: boundaries, headers, fields
EXPIRES_AFTER_S = (3600, 30 * 86400)  # OpenAI's bounds on expires_after[seconds]


def runner_of(request: Request) -> BatchRunner:
    runner: BatchRunner = request.app.state.batch_runner
    return runner


def owner_of(request: Request) -> str | None:
    """The key whose files and batches this request may see and makes; None when no keys are
    configured (then everything is everyone's, as before keys). Another key's file or batch is a 404,
    the same answer as one that does not exist, so ids cannot be probed."""
    principal = request.scope.get("state", {}).get("principal")
    key_id = getattr(principal, "key_id", None)
    return None if key_id is None else str(key_id)


async def run_db(fn: Any) -> Any:
    return await anyio.to_thread.run_sync(fn)


def file_object(row: FileRow, *, retention_s: float | None) -> dict[str, Any]:
    """OpenAI's file object; ``expires_at`` is the file's own expiry, else the end of its retention."""
    expires = row.expires_at if row.expires_at is not None else (
        row.created_at + retention_s if retention_s else None)
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": int(row.created_at),
            "filename": row.filename, "purpose": row.purpose, "status": "processed",
            "expires_at": None if expires is None else int(expires), "status_details": None}


@dataclass(kw_only=True)
class Upload:
    """A received upload: its fields, and the file's bytes in ``spool`` (rewound)."""

    purpose: str
    filename: str
    spool: IO[bytes]
    expires_after_s: int | None


class _Receiver:
    """Routes parser events: the file part to the spool in ``CHUNK_BYTES`` writes, fields to small buffers."""

    def __init__(self, *, max_file_bytes: int, spool_dir: str | None) -> None:
        self.max_file_bytes = max_file_bytes
        # Closed by receive_upload on failure, else by the handler once the store has it.
        self.spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=CHUNK_BYTES, dir=spool_dir)  # noqa: SIM115
        self.fields: dict[str, bytearray] = {}
        self.filename: str | None = None
        self.current: str | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.file_bytes = 0

    async def handle(self, event: PartStart | PartData | PartEnd) -> None:
        if isinstance(event, PartStart):
            self.start(event)
        elif isinstance(event, PartEnd):
            self.current = None
        elif self.current == "file":
            await self.file_data(event.data)
        elif self.current is not None:
            field = self.fields[self.current]
            field += event.data
            if len(field) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"{self.current} is longer than {MAX_FIELD_BYTES} bytes", param=self.current)

    def start(self, part: PartStart) -> None:
        if part.name not in FIELDS:
            raise InvalidRequest(f"unknown multipart field {part.name!r}; expected {list(FIELDS)}", param=part.name)
        if part.name in self.fields or (part.name == "file" and self.filename is not None):
            raise InvalidRequest(f"the multipart field {part.name!r} appears twice", param=part.name)
        self.current = part.name
        if part.name != "file":
            self.fields[part.name] = bytearray()
        elif not part.filename or len(part.filename) > 512:
            raise InvalidRequest("the 'file' part needs a filename of 1 to 512 characters", param="file")
        else:
            self.filename = part.filename

    async def file_data(self, data: bytes) -> None:
        self.file_bytes += len(data)
        if self.file_bytes > self.max_file_bytes:
            raise PayloadTooLarge(f"the file exceeds {self.max_file_bytes} bytes (batch.max_file_bytes)", param="file")
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes >= CHUNK_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self.pending:
            await anyio.to_thread.run_sync(self.spool.write, b"".join(self.pending))
            self.pending, self.pending_bytes = [], 0

    def text(self, name: str) -> str | None:
        raw = self.fields.get(name)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"{name} is not valid UTF-8 text", param=name) from None


async def _arriving(request: Request, idle_s: float) -> AsyncIterator[bytes]:
    """The body's chunks; :class:`RequestTimeout` (408) once none has come for ``idle_s`` (a large
    upload may take long, but a stalled one must not hold its spool file and a task forever)."""
    stream = request.stream().__aiter__()
    while True:
        try:
            with anyio.fail_after(idle_s):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeout(f"the upload stalled: nothing arrived for {idle_s:g} s", param="file") from None
        yield chunk


async def receive_upload(request: Request, *, max_file_bytes: int, spool_dir: str | None,
                         idle_s: float = 30.0) -> Upload:
    """Parse a ``multipart/form-data`` upload as it arrives; the caller closes ``Upload.spool``."""
    limit = max_file_bytes + HEADROOM_BYTES
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the file limit is {max_file_bytes} "
                              "(batch.max_file_bytes)", param="file")
    parser = MultipartParser(boundary_of(request.headers.get("content-type", "")))
    receiver = _Receiver(max_file_bytes=max_file_bytes, spool_dir=spool_dir)
    try:
        received = 0
        async for chunk in _arriving(request, idle_s):
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes (batch.max_file_bytes)", param="file")
            for event in parser.feed(chunk):
                await receiver.handle(event)
        parser.close()
        await receiver.flush()
        upload = _upload(receiver)
        receiver.spool.seek(0)
        return upload
    except BaseException:
        receiver.spool.close()
        raise


def _upload(receiver: _Receiver) -> Upload:
    purpose = receiver.text("purpose")
    if purpose is None:
        raise InvalidRequest("purpose is required", param="purpose", code="missing_required_parameter")
    if purpose not in PURPOSES:
        raise InvalidRequest(f"purpose must be one of {list(PURPOSES)} (got {purpose!r})", param="purpose")
    if receiver.filename is None:
        raise InvalidRequest("a file part named 'file' is required", param="file", code="missing_required_parameter")
    return Upload(purpose=purpose, filename=receiver.filename, spool=receiver.spool,
                  expires_after_s=_expires_after(receiver.text("expires_after[anchor]"),
                                                 receiver.text("expires_after[seconds]")))


def _expires_after(anchor: str | None, seconds: str | None) -> int | None:
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("expires_after[anchor] must be 'created_at'", param="expires_after.anchor")
    low, high = EXPIRES_AFTER_S
    if seconds is None or not seconds.isdigit() or not low <= int(seconds) <= high:
        raise InvalidRequest(f"expires_after[seconds] must be an integer from {low} to {high}",
                             param="expires_after.seconds")
    return int(seconds)


async def create_file(request: Request) -> Response:
    runner = runner_of(request)
    files = runner.gateway.config.files
    upload = await receive_upload(request, max_file_bytes=runner.config.max_file_bytes, spool_dir=files.spool_dir,
                                  idle_s=files.upload_idle_s)
    now = time.time()
    expires_at = None if upload.expires_after_s is None else now + upload.expires_after_s
    with upload.spool:
        row = await run_db(partial(runner.queue.add_file, purpose=upload.purpose, filename=upload.filename,
                                   content=upload.spool, now=now, expires_at=expires_at, key_id=owner_of(request)))
    return JSONResponse(file_object(row, retention_s=files.retention_s))


def _no_file(request: Request) -> NotFound:
    return NotFound(f"no file {request.path_params['file_id']!r}", param="file_id")


async def retrieve_file(request: Request) -> Response:
    runner = runner_of(request)
    row = await run_db(partial(runner.queue.get_file, request.path_params["file_id"], key_id=owner_of(request)))
    if row is None:
        raise _no_file(request)
    return JSONResponse(file_object(row, retention_s=runner.gateway.config.files.retention_s))


async def file_content(request: Request) -> Response:
    queue = runner_of(request).queue
    row = await run_db(partial(queue.get_file, request.path_params["file_id"], key_id=owner_of(request)))
    chunks = await run_db(partial(queue.file_chunks, request.path_params["file_id"], key_id=owner_of(request)))
    if row is None or chunks is None:
        raise _no_file(request)
    return StreamingResponse(_stream(chunks), media_type="application/jsonl",
                             headers={"content-length": str(row.bytes)})


async def _stream(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Each stored chunk read in a worker thread, so a large file is never held whole."""
    while (chunk := await anyio.to_thread.run_sync(next, chunks, None)) is not None:
        yield chunk


async def list_files(request: Request) -> Response:
    runner = runner_of(request)
    query = _list_query(request)
    limit = query["limit"]
    rows = await run_db(partial(runner.queue.list_files, **{**query, "limit": limit + 1},
                                key_id=owner_of(request)))
    page = rows[:limit]
    retention_s = runner.gateway.config.files.retention_s
    return JSONResponse({"object": "list", "data": [file_object(row, retention_s=retention_s) for row in page],
                         "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
                         "has_more": len(rows) > limit})


def _list_query(request: Request) -> dict[str, Any]:
    """``limit`` (1 to 10,000, default 10,000, as OpenAI), ``order`` (``desc``), ``after``, ``purpose``."""
    params = request.query_params
    limit = params.get("limit", "10000")
    if not limit.isdigit() or not 1 <= int(limit) <= 10_000:
        raise InvalidRequest("limit must be an integer from 1 to 10000", param="limit")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'", param="order")
    purpose = params.get("purpose")
    if purpose is not None and not plausible_id(purpose):  # a NUL would reach PostgreSQL's text type
        raise InvalidRequest("purpose must be printable ASCII", param="purpose")
    return {"limit": int(limit), "order": order, "after": params.get("after"), "purpose": purpose}


async def delete_file(request: Request) -> Response:
    """Delete a file; a batch made from it keeps running (its lines were queued when it was created)."""
    file_id = request.path_params["file_id"]
    if not await run_db(partial(runner_of(request).queue.delete_file, file_id, key_id=owner_of(request))):
        raise _no_file(request)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


FILE_ROUTES = [
    Route("/v1/files", create_file, methods=["POST"]),
    Route("/v1/files", list_files, methods=["GET"]),
    Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
    Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
]
