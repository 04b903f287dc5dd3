"""The fuzz stage: schemathesis reads ``GET /openapi.json`` and sends a few hundred generated requests
(schema-conforming and schema-violating) to every operation of the in-process app, backed by mock
backends. No response may be a 5xx, and every 4xx/5xx must carry OpenAI's error body.

Bounded: ``EXAMPLES`` cases per operation and mode, derandomised (the same cases on every run), so it
finishes in well under two minutes on one core. ``WATTWISE_FUZZ_EXAMPLES`` raises it for a long run.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.python import asgi as schemathesis_asgi
from tests.conftest import make_gateway
from tests.test_hostile import is_openai_error

from wattwise.api.app import create_app
from wattwise.store.sql import open_store

EXAMPLES = int(os.environ.get("WATTWISE_FUZZ_EXAMPLES", "12"))


SERVED = ("cheap", "dear", "auto")


def served_mostly(strategy: Any) -> Any:
    """Three cases in four name a model this gateway serves (a generated name is nearly always a 404,
    which would leave routing, metering and rendering unfuzzed)."""
    def pick(pair: tuple[schemathesis.Case, int]) -> schemathesis.Case:
        case, index = pair
        if isinstance(case.body, dict) and isinstance(case.body.get("model"), str) and index < len(SERVED):
            case.body["model"] = SERVED[index]
        return case
    return st.tuples(strategy, st.integers(0, len(SERVED))).map(pick)


def run_operation(operation: Any, mode: GenerationMode, seen: list[tuple[str, int, str]]) -> None:
    strategy = operation.as_strategy(generation_mode=mode)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=served_mostly(strategy) if mode is GenerationMode.POSITIVE else strategy)
    def fuzz(case: schemathesis.Case) -> None:
        try:
            response = case.call()
        except Exception as exc:  # the app let an exception escape: a 500 on a real server
            seen.append((f"{case.method} {case.formatted_path}", 599, f"{type(exc).__name__}: {exc} "
                         f"body={json.dumps(case.body, default=str)[:300]}"))
            return
        detail = ""
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            if not is_openai_error(body):
                detail = "no OpenAI error body: " + response.text[:200]
        if response.status_code >= 500 or detail:
            detail += f" body={json.dumps(case.body, default=str)[:300]} query={case.query}"
        seen.append((f"{case.method} {case.formatted_path}", response.status_code, detail))

    try:
        fuzz()
    except Unsatisfiable:  # nothing to violate (a GET without parameters has no negative cases)
        assert mode is GenerationMode.NEGATIVE, operation.label


def test_fuzz_the_openapi_description(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/traces.db")
    app = create_app(make_gateway(store))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan
    seen: list[tuple[str, int, str]] = []
    try:
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 18
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                run_operation(operation, mode, seen)
    finally:
        schemathesis_asgi.shutdown_lifespans()
    bad = [f"{where} -> {status}: {detail}" for where, status, detail in seen if status >= 500 or detail]
    statuses = sorted(Counter(status for _, status, _ in seen).items())
    print(f"fuzz: {len(seen)} cases, {sum(status >= 500 for _, status, _ in seen)} x 5xx; statuses {statuses}")
    assert len(seen) >= 200
    assert not bad, f"{len(bad)} of {len(seen)} fuzz cases failed:\n" + "\n".join(bad[:40])


@pytest.mark.anyio
async def test_openapi_json_is_served_and_matches_the_routes(client: Any) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    for path, method in (("/v1/chat/completions", "post"), ("/v1/embeddings", "post"), ("/v1/completions", "post"),
                         ("/v1/responses", "post"), ("/v1/models", "get"), ("/v1/models/{model}", "get"),
                         ("/v1/files", "post"), ("/v1/files", "get"), ("/v1/files/{file_id}", "get"),
                         ("/v1/files/{file_id}", "delete"), ("/v1/files/{file_id}/content", "get"),
                         ("/v1/batches", "post"), ("/v1/batches", "get"), ("/v1/batches/{batch_id}", "get"),
                         ("/v1/batches/{batch_id}/cancel", "post"), ("/v1/wattwise/feedback", "post"),
                         ("/healthz", "get"), ("/metrics", "get")):
        assert method in paths[path], (path, method)
        assert paths[path][method]["responses"]["5XX"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}
    chat = document["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(chat["required"])
    assert chat["properties"]["max_tokens"]["anyOf"][0]["type"] == "integer"
