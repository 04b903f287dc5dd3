"""The OpenAI Batch API: ``/v1/batches``, and (from :mod:`wattwise.api.files`) ``/v1/files``.

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
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wattwise.api.body import read_json
from wattwise.api.files import FILE_ROUTES, owner_of, run_db, runner_of
from wattwise.batch import BatchRunner, parse_input
from wattwise.exceptions import InvalidRequest, NotFound
from wattwise.store.batch import WINDOWS_S, BatchRow

ENDPOINTS = ("/v1/chat/completions",)
MAX_BODY_BYTES = 1_000_000
# OpenAI's metadata bounds: at most 16 pairs, keys up to 64 characters, string values up to 512.
METADATA_PAIRS, METADATA_KEY, METADATA_VALUE = 16, 64, 512


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
    counts = await run_db(partial(runner.queue.counts, row.id))
    return JSONResponse(batch_object(row, counts))


def _choice(data: dict[str, Any], name: str, allowed: Any) -> str:
    value = data.get(name)
    if value is None:
        raise InvalidRequest(f"{name} is required", param=name, code="missing_required_parameter")
    if not isinstance(value, str) or value not in allowed:  # a list or dict must not reach `in` a dict
        raise InvalidRequest(f"{name} must be one of {list(allowed)} (got {json.dumps(value)[:80]})", param=name)
    return value


def _create_args(data: dict[str, Any]) -> tuple[str, str, str, dict[str, str] | None]:
    file_id = data.get("input_file_id")
    if file_id is None:
        raise InvalidRequest("input_file_id is required", param="input_file_id", code="missing_required_parameter")
    if not isinstance(file_id, str):
        raise InvalidRequest("input_file_id must be a string", param="input_file_id")
    endpoint = _choice(data, "endpoint", ENDPOINTS)
    window = _choice(data, "completion_window", WINDOWS_S)
    return file_id, endpoint, window, _metadata(data.get("metadata"))


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > METADATA_PAIRS:
        raise InvalidRequest(f"metadata must be an object of at most {METADATA_PAIRS} pairs", param="metadata")
    for key, item in value.items():
        if len(key) > METADATA_KEY or not isinstance(item, str) or len(item) > METADATA_VALUE:
            raise InvalidRequest(f"metadata keys are at most {METADATA_KEY} characters and values strings of at "
                                 f"most {METADATA_VALUE}", param=f"metadata.{key[:METADATA_KEY]}")
    return value


async def create_batch(request: Request) -> Response:
    runner = runner_of(request)
    data = await read_json(request, MAX_BODY_BYTES, setting="a 1 MB cap on batch requests")
    file_id, endpoint, window, metadata = _create_args(data)
    owner = owner_of(request)
    lines = await _lines(runner, file_id, endpoint, owner)
    row = await run_db(partial(runner.queue.add_batch, input_file_id=file_id, endpoint=endpoint,
                               completion_window=window, metadata=metadata, lines=lines, now=time.time(),
                               key_id=owner))
    runner.wake()
    return await _batch_response(runner, row)


async def _lines(runner: BatchRunner, file_id: str, endpoint: str, owner: str | None) -> list[Any]:
    upload = await run_db(partial(runner.queue.get_file, file_id, key_id=owner))
    chunks = await run_db(partial(runner.queue.file_chunks, file_id, key_id=owner))
    if upload is None or chunks is None or upload.kind != "upload":
        raise NotFound(f"no input file {file_id!r}", param="input_file_id")
    gateway = runner.gateway
    parse = partial(parse_input, chunks, file_label=f"{upload.filename} ({file_id})", endpoint=endpoint,
                    known_model=lambda name: name in gateway.backends or name == "auto" or name.startswith("auto:"),
                    max_body_bytes=gateway.config.server.max_body_bytes)
    lines = await run_db(parse)
    if not lines:
        raise InvalidRequest(f"{upload.filename} ({file_id}) has no requests", param="input_file_id")
    if len(lines) > runner.config.max_lines:
        raise InvalidRequest(f"{upload.filename} ({file_id}) has {len(lines)} requests; the limit is "
                             f"{runner.config.max_lines} ([batch] max_lines)", param="input_file_id")
    return lines


async def retrieve_batch(request: Request) -> Response:
    runner = runner_of(request)
    row = await run_db(partial(runner.queue.get_batch, request.path_params["batch_id"], key_id=owner_of(request)))
    if row is None:
        raise NotFound(f"no batch {request.path_params['batch_id']!r}", param="batch_id")
    return await _batch_response(runner, row)


async def cancel_batch(request: Request) -> Response:
    runner = runner_of(request)
    row = await run_db(partial(runner.queue.cancel, request.path_params["batch_id"], now=time.time(),
                               key_id=owner_of(request)))
    if row is None:
        raise NotFound(f"no batch {request.path_params['batch_id']!r}", param="batch_id")
    runner.wake()
    return await _batch_response(runner, row)


async def list_batches(request: Request) -> Response:
    runner = runner_of(request)
    try:
        limit = min(max(int(request.query_params.get("limit", "20")), 1), 100)
    except ValueError:
        raise InvalidRequest("limit must be an integer", param="limit") from None
    rows = await run_db(partial(runner.queue.list_batches, limit=limit + 1, after=request.query_params.get("after"),
                                key_id=owner_of(request)))
    page = rows[:limit]
    data = [batch_object(row, await run_db(partial(runner.queue.counts, row.id))) for row in page]
    return JSONResponse({"object": "list", "data": data, "first_id": page[0].id if page else None,
                         "last_id": page[-1].id if page else None, "has_more": len(rows) > limit})


BATCH_ROUTES = [
    *FILE_ROUTES,
    Route("/v1/batches", create_batch, methods=["POST"]),
    Route("/v1/batches", list_batches, methods=["GET"]),
    Route("/v1/batches/{batch_id}", retrieve_batch, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
]
