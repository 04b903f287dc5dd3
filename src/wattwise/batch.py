"""Batch jobs: validate an input file into lines, and run queued lines in the headroom interactive
traffic leaves.

Each line runs through the gateway's normal path (``async with gateway.call(...)`` →
``call.complete()``), so it is routed, metered and traced like any request, with priority ``batch`` and
tag ``batch:<id>``. The queue itself, and its exactly-once bookkeeping, is
:class:`~wattwise.store.batch.BatchStore`.

Usage::

    lines = parse_input(content, file_label="in.jsonl (file-abc)", endpoint="/v1/chat/completions",
                        known_model=lambda name: name in gateway.backends, max_body_bytes=10_000_000)
    runner = BatchRunner(gateway=gateway, queue=BatchStore(store=gateway.store), render=completion_body)
    await runner.start()
    ...
    await runner.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import partial
from typing import Any

import anyio

from wattwise.call import new_request_id
from wattwise.exceptions import WattwiseError
from wattwise.gateway import Call, Gateway, Outcome
from wattwise.jsontext import decode_json
from wattwise.request import ChatBody, parse_chat_body
from wattwise.store.batch import BatchStore, Claim, NewLine

log = logging.getLogger(__name__)

Render = Callable[[Call, Outcome], dict[str, Any]]
# (call, the key that owns the line's batch) → raises the refusal, or arranges the settlement.
Govern = Callable[[Call, "str | None"], Awaitable[None]]


class LineError(ValueError):
    """A bad input line; ``param`` is the field, dotted from the line's top (``body.messages``)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def parse_input(content: bytes | Iterable[bytes], *, file_label: str, endpoint: str,
                known_model: Callable[[str], bool], max_body_bytes: int) -> list[NewLine]:
    """Every non-blank line of a batch input file, each valid or carrying the error that fails it.

    ``content`` is the file, or its bytes in chunks of any size (a stored file, read a chunk at a time).
    An error names the file, the 1-based line and the field: ``in.jsonl (file-abc) line 3, field
    'body.messages': Field required``.
    """
    lines: list[NewLine] = []
    seen: set[str] = set()
    chunks = [content] if isinstance(content, bytes) else content
    for number, raw in enumerate(split_lines(chunks), start=1):
        if not raw.strip():
            continue
        custom_id = None
        try:
            data = _json_object(raw)
            custom_id = _custom_id(data, seen)
            body, model = _request_body(data, endpoint=endpoint, known_model=known_model,
                                        max_body_bytes=max_body_bytes)
        except LineError as exc:
            where = f"{file_label} line {number}" + (f", field '{exc.param}'" if exc.param else "")
            error = {"code": "invalid_request", "message": f"{where}: {exc}", "param": exc.param}
            lines.append(NewLine(line_no=number, custom_id=custom_id, body=None, error=error))
            continue
        seen.add(custom_id)
        lines.append(NewLine(line_no=number, custom_id=custom_id, body=body, model=model))
    return lines


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The ``\\n``-separated lines of a byte stream given in chunks (a line may span chunks).

    >>> list(split_lines([b"a\\nb", b"c\\n", b"d"]))
    [b'a', b'bc', b'd']
    """
    tail = b""
    for chunk in chunks:
        *whole, tail = (tail + chunk).split(b"\n")
        yield from whole
    yield tail


def _json_object(raw: bytes) -> dict[str, Any]:
    """The line as a JSON object, with the checks every JSON body gets (strict UTF-8, no lone
    surrogate, which no UTF-8 text nor the store can hold, finite numbers, bounded depth)."""
    try:
        data = decode_json(raw)
    except WattwiseError as exc:
        message = exc.message.replace("the request body is ", "").replace("the request body ", "the line ")
        raise LineError(message, param=exc.param) from None
    if not isinstance(data, dict):
        raise LineError("each line must be a JSON object")
    return data


def _custom_id(data: dict[str, Any], seen: set[str]) -> str:
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError("custom_id must be a non-empty string", param="custom_id")
    if "\x00" in custom_id or len(custom_id) > 512:
        raise LineError("custom_id must be at most 512 characters, with no NUL", param="custom_id")
    if custom_id in seen:
        raise LineError(f"custom_id {custom_id!r} is not unique in this file", param="custom_id")
    return custom_id


def _request_body(data: dict[str, Any], *, endpoint: str, known_model: Callable[[str], bool],
                  max_body_bytes: int) -> tuple[str, str]:
    if data.get("method") != "POST":
        raise LineError("method must be \"POST\"", param="method")
    if data.get("url") != endpoint:
        raise LineError(f"url must be the batch's endpoint {endpoint!r}", param="url")
    body = data.get("body")
    if not isinstance(body, dict):
        raise LineError("body must be a JSON object", param="body")
    text = json.dumps(body, ensure_ascii=False)
    try:
        parsed = parse_chat_body(text.encode(), max_bytes=max_body_bytes)
    except WattwiseError as exc:
        param = f"body.{exc.param}" if exc.param else "body"
        raise LineError(exc.message.split("': ", 1)[-1], param=param) from None
    if parsed.stream:
        raise LineError("a batch line cannot stream", param="body.stream")
    if not known_model(parsed.model):
        raise LineError(f"the model {parsed.model!r} does not exist", param="body.model")
    return text, parsed.model


class BatchRunner:
    """Claims queued lines and runs them, while this replica has headroom.

    ``headroom`` says how many more batch lines may start now; by default, what is left under
    ``[batch] max_in_flight`` after the requests in flight, capped by ``max_concurrency``. A
    scheduler that knows its fleet better passes its own.
    """

    def __init__(self, *, gateway: Gateway, queue: BatchStore, render: Render,
                 headroom: Callable[[], int] | None = None, owner: str | None = None,
                 govern: Govern | None = None) -> None:
        self.gateway = gateway
        self.queue = queue
        # Access control for a line: charged to the budgets of the key that created its batch.
        self.govern = govern
        self._batch_keys: dict[str, str | None] = {}
        self.render = render
        self.config = gateway.config.batch
        self.headroom = headroom or self.in_flight_headroom
        # Readable in the queue (which host and process holds a line), and unique per start.
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.running: dict[Claim, asyncio.Task[None]] = {}
        self.lost = 0  # results fenced out because the lease had passed to another runner
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._beat_at = 0.0

    def in_flight_headroom(self) -> int:
        busy = sum(self.gateway.in_flight.values())
        return self.config.max_in_flight - busy

    def free_slots(self) -> int:
        return max(0, min(self.config.max_concurrency - len(self.running), self.headroom()))

    def wake(self) -> None:
        """Look at the queue now (a batch was added, a line finished) instead of at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        if self.config.enabled and self._loop_task is None:
            self._stopping = False
            self._loop_task = asyncio.create_task(self._loop(), name=f"wattwise-batch-{self.owner}")

    async def stop(self) -> None:
        """Stop claiming; let running lines finish for ``drain_s``, then cancel and hand back the rest."""
        if self._loop_task is None:
            return
        # A flag as well as the cancel: on Python 3.11 a cancel that lands as wait_for times out is
        # lost (it surfaces as TimeoutError), and the loop would go on for ever.
        self._stopping = True
        self._wake.set()
        self._loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        self._loop_task = None
        tasks = list(self.running.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.drain_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._db(partial(self.queue.release, owner=self.owner))

    async def _db(self, fn: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(fn)

    async def _loop(self) -> None:
        interval = min(self.config.poll_interval_s, self.config.lease_s / 3)
        while not self._stopping:
            try:
                await self.tick()
            except Exception:
                log.exception("batch runner tick failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            self._wake.clear()

    async def tick(self) -> int:
        """One round: renew leases, expire and close batches, start as many lines as headroom allows."""
        now = time.time()
        if self.running and now - self._beat_at >= self.config.lease_s / 3:
            self._beat_at = now
            await self._db(partial(self.queue.heartbeat, list(self.running), owner=self.owner,
                                   lease_until=now + self.config.lease_s))
        await self._db(partial(self.queue.expire_due, now=now))
        await self._db(partial(self.queue.finalize_ready, now=now))
        await self._db(partial(self.queue.purge_expired, now=now, retention_s=self.gateway.config.files.retention_s,
                               every_s=self.gateway.config.files.purge_interval_s))
        free = self.free_slots()
        if not free:
            return 0
        claims = await self._db(partial(self.queue.claim, owner=self.owner, limit=free,
                                        lease_s=self.config.lease_s, now=now))
        for claim in claims:
            self.running[claim] = asyncio.create_task(self._run(claim),
                                                      name=f"batch-line-{claim.batch_id}-{claim.line_no}")
        return len(claims)

    async def _run(self, claim: Claim) -> None:
        try:
            state, request_id, response = await self._call(claim)
            accepted = await self._db(partial(self.queue.finish, claim, owner=self.owner, state=state,
                                              request_id=request_id, response=response, now=time.time()))
            if not accepted:
                self.lost += 1
                log.warning("batch %s line %d: lease lost; its result was not recorded", claim.batch_id,
                            claim.line_no)
        except Exception:
            log.exception("batch %s line %d: recording its result failed; the line will be re-run after "
                          "its lease ends", claim.batch_id, claim.line_no)
        finally:
            self.running.pop(claim, None)
            self.wake()

    async def _batch_key(self, batch_id: str) -> str | None:
        """The API key that created the batch (cached: a batch never changes owner)."""
        if batch_id not in self._batch_keys:
            row = await self._db(partial(self.queue.get_batch, batch_id))
            self._batch_keys[batch_id] = row.key_id if row is not None else None
        return self._batch_keys[batch_id]

    async def _call(self, claim: Claim) -> tuple[str, str, dict[str, Any]]:
        """The line as a metered, traced request: ``(state, request_id, response)``."""
        request_id = new_request_id()
        try:
            body = batch_body(parse_chat_body(claim.body.encode(), max_bytes=self.gateway.config.server.max_body_bytes))
        except WattwiseError as exc:  # valid when queued; a config change since can reject it
            return "failed", request_id, {"status_code": exc.status, "request_id": request_id, "body": exc.to_body()}
        call = self.gateway.call(body, request_id=request_id, tag=f"batch:{claim.batch_id}")
        call.cancelled_as = ("cancelled", 499, "batch runner stopped")
        try:
            async with call:
                if self.govern is not None:
                    await self.govern(call, await self._batch_key(claim.batch_id))
                outcome = await call.complete()
                response = self.render(call, outcome)
        except WattwiseError as error:  # the call recorded it (an unexpected exception arrives mapped)
            return "failed", request_id, {"status_code": error.status, "request_id": request_id,
                                          "body": error.to_body()}
        return "done", request_id, {"status_code": 200, "request_id": request_id, "body": response}


def batch_body(body: ChatBody) -> ChatBody:
    """The line's body with priority ``batch``, whatever the line asked for."""
    options = body.wattwise.model_copy(update={"priority": "batch"})
    return body.model_copy(update={"wattwise": options})
