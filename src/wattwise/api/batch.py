"""The OpenAI Batch API: ``/v1/files`` (purpose ``batch``) and ``/v1/batches``.

Files and batches live in the trace store, so any replica sharing it answers for any of them. The
app needs ``app.state.batch_runner`` (a :class:`~wattwise.batch.BatchRunner`); ``create_app`` sets it.

Usage::

    routes = [..., *BATCH_ROUTES]

    client.files.create(file=open("in.jsonl", "rb"), purpose="batch")            # openai client
    client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from functools import partial
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wattwise.api.body import read_limited
from wattwise.api.errors import error_response
from wattwise.batch import BatchRunner, parse_input
from wattwise.exceptions import InvalidRequest, NotFound, WattwiseError
from wattwise.store.batch import WINDOWS_S, BatchRow, FileRow

ENDPOINTS = ("/v1/chat/completions",)


@dataclass(frozen=True, kw_only=True)
class Part:
    """One part of a multipart/form-data body."""

    name: str
    filename: str | None
    data: bytes


def parse_multipart(raw: bytes, *, content_type: str) -> dict[str, Part]:
    """The parts of a ``multipart/form-data`` body by field name (exact bytes; no temp files).

    >>> parse_multipart(b'--b\\r\\nContent-Disposition: form-data; name="purpose"\\r\\n\\r\\nbatch\\r\\n--b--\\r\\n',
    ...                 content_type="multipart/form-data; boundary=b")["purpose"].data
    b'batch'
    """
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
        raise InvalidRequest("the body must be multipart/form-data with a boundary", param="file")
    parts: dict[str, Part] = {}
    for chunk in raw.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = HeaderParser().parsestr(head.decode("latin-1"))
        name = headers.get_param("name", header="content-disposition")
        if isinstance(name, str):
            parts[name] = Part(name=name, filename=headers.get_filename(), data=data.removesuffix(b"\r\n"))
    return parts


def _runner(request: Request) -> BatchRunner:
    runner: BatchRunner = request.app.state.batch_runner
    return runner


async def _db(fn: Any) -> Any:
    return await anyio.to_thread.run_sync(fn)


def file_object(row: FileRow) -> dict[str, Any]:
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": int(row.created_at),
            "filename": row.filename, "purpose": row.purpose, "status": "processed", "expires_at": None,
            "status_details": None}


def batch_object(row: BatchRow, counts: dict[str, int]) -> dict[str, Any]:
    """OpenAI's batch object; ``failed`` counts failed and expired lines, cancelled lines neither."""
    def stamp(value: float | None) -> int | None:
        return None if value is None else int(value)

    body: dict[str, Any] = {
        "id": row.id, "object": "batch", "endpoint": row.endpoint, "input_file_id": row.input_file_id,
        "completion_window": row.completion_window, "status": row.status,
        "output_file_id": row.output_file_id, "error_file_id": row.error_file_id,
        "errors": json.loads(row.errors) if row.errors else None,
        "metadata": json.loads(row.metadata) if row.metadata else None,
        "request_counts": {"total": sum(counts.values()), "completed": counts.get("done", 0),
                           "failed": counts.get("failed", 0) + counts.get("expired", 0)},
    }
    for name in ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
                 "expired_at", "cancelling_at", "cancelled_at"):
        body[name] = stamp(getattr(row, name))
    body["wattwise"] = {"pending": counts.get("pending", 0), "running": counts.get("running", 0),
                        "cancelled": counts.get("cancelled", 0)}
    return body


async def _batch_response(runner: BatchRunner, row: BatchRow) -> Response:
    counts = await _db(partial(runner.queue.counts, row.id))
    return JSONResponse(batch_object(row, counts))


async def create_file(request: Request) -> Response:
    runner = _runner(request)
    try:
        raw = await read_limited(request, runner.config.max_file_bytes, setting="batch.max_file_bytes")
        parts = parse_multipart(raw, content_type=request.headers.get("content-type", ""))
        purpose = parts["purpose"].data.decode() if "purpose" in parts else None
        if purpose != "batch":
            raise InvalidRequest(f"purpose must be 'batch' (got {purpose!r})", param="purpose")
        upload = parts.get("file")
        if upload is None or upload.filename is None:
            raise InvalidRequest("a file part named 'file' is required", param="file")
    except WattwiseError as exc:
        return error_response(exc)
    row = await _db(partial(runner.queue.add_file, purpose=purpose, filename=upload.filename,
                            content=upload.data, now=time.time()))
    return JSONResponse(file_object(row))


async def retrieve_file(request: Request) -> Response:
    row = await _db(partial(_runner(request).queue.get_file, request.path_params["file_id"]))
    if row is None:
        return error_response(NotFound(f"no file {request.path_params['file_id']!r}", param="file_id"))
    return JSONResponse(file_object(row))


async def file_content(request: Request) -> Response:
    content = await _db(partial(_runner(request).queue.file_content, request.path_params["file_id"]))
    if content is None:
        return error_response(NotFound(f"no file {request.path_params['file_id']!r}", param="file_id"))
    return Response(content, media_type="application/jsonl")


def _create_args(data: Any) -> tuple[str, str, str, dict[str, Any] | None]:
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object", code="invalid_json")
    file_id, endpoint, window = data.get("input_file_id"), data.get("endpoint"), data.get("completion_window")
    if not isinstance(file_id, str):
        raise InvalidRequest("input_file_id is required", param="input_file_id", code="missing_required_parameter")
    if endpoint not in ENDPOINTS:
        raise InvalidRequest(f"endpoint must be one of {list(ENDPOINTS)}", param="endpoint")
    if window not in WINDOWS_S:
        raise InvalidRequest(f"completion_window must be one of {list(WINDOWS_S)}", param="completion_window")
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("metadata must be an object", param="metadata")
    return file_id, str(endpoint), str(window), metadata


async def create_batch(request: Request) -> Response:
    runner = _runner(request)
    try:
        try:
            data = json.loads(await read_limited(request, 1_000_000, setting="a 1 MB cap on batch requests"))
        except ValueError as exc:
            raise InvalidRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
        file_id, endpoint, window, metadata = _create_args(data)
        lines = await _lines(runner, file_id, endpoint)
    except WattwiseError as exc:
        return error_response(exc)
    row = await _db(partial(runner.queue.add_batch, input_file_id=file_id, endpoint=endpoint,
                            completion_window=window, metadata=metadata, lines=lines, now=time.time()))
    runner.wake()
    return await _batch_response(runner, row)


async def _lines(runner: BatchRunner, file_id: str, endpoint: str) -> list[Any]:
    upload = await _db(partial(runner.queue.get_file, file_id))
    if upload is None or upload.kind != "upload":
        raise NotFound(f"no input file {file_id!r}", param="input_file_id")
    content = await _db(partial(runner.queue.file_content, file_id))
    gateway = runner.gateway
    parse = partial(parse_input, content, file_label=f"{upload.filename} ({file_id})", endpoint=endpoint,
                    known_model=lambda name: name in gateway.backends or name == "auto" or name.startswith("auto:"),
                    max_body_bytes=gateway.config.server.max_body_bytes)
    lines = await _db(parse)
    if not lines:
        raise InvalidRequest(f"{upload.filename} ({file_id}) has no requests", param="input_file_id")
    if len(lines) > runner.config.max_lines:
        raise InvalidRequest(f"{upload.filename} ({file_id}) has {len(lines)} requests; the limit is "
                             f"{runner.config.max_lines} ([batch] max_lines)", param="input_file_id")
    return lines


async def retrieve_batch(request: Request) -> Response:
    runner = _runner(request)
    row = await _db(partial(runner.queue.get_batch, request.path_params["batch_id"]))
    if row is None:
        return error_response(NotFound(f"no batch {request.path_params['batch_id']!r}", param="batch_id"))
    return await _batch_response(runner, row)


async def cancel_batch(request: Request) -> Response:
    runner = _runner(request)
    row = await _db(partial(runner.queue.cancel, request.path_params["batch_id"], now=time.time()))
    if row is None:
        return error_response(NotFound(f"no batch {request.path_params['batch_id']!r}", param="batch_id"))
    runner.wake()
    return await _batch_response(runner, row)


async def list_batches(request: Request) -> Response:
    runner = _runner(request)
    try:
        limit = min(max(int(request.query_params.get("limit", "20")), 1), 100)
    except ValueError:
        return error_response(InvalidRequest("limit must be an integer", param="limit"))
    rows = await _db(partial(runner.queue.list_batches, limit=limit + 1, after=request.query_params.get("after")))
    page = rows[:limit]
    data = [batch_object(row, await _db(partial(runner.queue.counts, row.id))) for row in page]
    return JSONResponse({"object": "list", "data": data, "first_id": page[0].id if page else None,
                         "last_id": page[-1].id if page else None, "has_more": len(rows) > limit})


BATCH_ROUTES = [
    Route("/v1/files", create_file, methods=["POST"]),
    Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
    Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
    Route("/v1/batches", create_batch, methods=["POST"]),
    Route("/v1/batches", list_batches, methods=["GET"]),
    Route("/v1/batches/{batch_id}", retrieve_batch, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
]
