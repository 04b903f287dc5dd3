"""The OpenAPI 3.1 description of wattwise's own HTTP API, served at ``GET /openapi.json``.

The chat request schema is generated from :class:`wattwise.request.ChatBody` (so it cannot drift from
what is validated); the rest is written out here, kept to what the handlers accept and answer. Every
error is OpenAI's error body. The fuzz stage (``tests/test_fuzz.py``) reads this document.

Usage::

    Route("/openapi.json", openapi_json, methods=["GET"])
    document = openapi_document(models=("cheap", "dear"))   # a dict; built once per set of model names
"""

from __future__ import annotations

import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from wattwise.request import ChatBody

REF = "#/components/schemas/{model}"
OBJ: dict[str, Any] = {"type": "object", "additionalProperties": True}
STR: dict[str, Any] = {"type": "string"}

ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": STR, "type": STR, "param": {"type": ["string", "null"]},
                       "code": {"type": ["string", "null"]}}}},
}



def model_id(models: tuple[str, ...], *, auto: bool) -> dict[str, Any]:
    """A model name: one of this gateway's (listed, so clients and the fuzzer find them) or any string."""
    names = [*models, "auto"] if auto else list(models)
    return {"anyOf": [{"enum": names}, {"type": "string", "minLength": 1}],
            "description": "A configured model name" + (", or 'auto'/'auto:<policy>'." if auto else ".")}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*statuses: str) -> dict[str, Any]:
    """Responses for the given 4xx statuses, plus 5XX; all carry OpenAI's error body."""
    return {status: {"description": "an error", **_json(_ref("Error"))} for status in (*statuses, "5XX")}


def _op(summary: str, ok: dict[str, Any], *errors: str, body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK", **ok}, **_errors(*errors)}}
    if body is not None:
        op["requestBody"] = {"required": True, **body}
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": STR}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": True}


def _any_of(schema: Any) -> Any:
    """``oneOf`` → ``anyOf``: ChatBody's unions are picked by a discriminator function, and an
    unknown content-part type overlaps the known ones, which ``oneOf`` would forbid."""
    if isinstance(schema, dict):
        return {("anyOf" if key == "oneOf" else key): _any_of(value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_any_of(item) for item in schema]
    return schema


def _message_by_role(message: dict[str, Any]) -> dict[str, Any]:
    """The message schema split by role, saying what ChatBody's validator checks: system, developer,
    user and tool messages need (non-null) content, tool messages a tool_call_id."""
    props = message["properties"]
    content = props["content"]["anyOf"][0]  # the non-null branch

    def variant(roles: list[str], *required: str) -> dict[str, Any]:
        narrowed = {**props, "role": {"type": "string", "enum": roles}}
        if "content" in required:
            narrowed["content"] = content
        if "tool_call_id" in required:
            narrowed["tool_call_id"] = STR
        return {**message, "properties": narrowed, "required": ["role", *required]}

    return {"anyOf": [variant(["system", "developer", "user"], "content"), variant(["tool"], "content", "tool_call_id"),
                      variant(["assistant", "function"])], "title": "Message"}


def _chat_schemas(models: tuple[str, ...]) -> dict[str, Any]:
    schema = _any_of(ChatBody.model_json_schema(ref_template=REF, by_alias=True))
    schema["properties"]["model"] = {**model_id(models, auto=True), "maxLength": 256}
    defs = schema.pop("$defs", {})
    defs["Message"] = _message_by_role(defs["Message"])
    schema["description"] = ("OpenAI's chat completion request. Also checked: stream_options needs stream; a "
                             "tool_choice other than none/auto needs tools.")
    return {**defs, "ChatCompletionRequest": schema}


def _proxy_body(models: tuple[str, ...], prompt_field: str, *, stream: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {"model": model_id(models, auto=False), prompt_field: {}}
    if stream:
        properties["stream"] = {"type": "boolean"}
    return _json(_object(["model", prompt_field], **properties))


def _paths(models: tuple[str, ...]) -> dict[str, Any]:
    file_id, batch_id = _path_param("file_id"), _path_param("batch_id")
    limit = _query("limit", {"type": "integer", "minimum": 1, "maximum": 100})
    after = _query("after", STR)
    sse = {"text/event-stream": {"schema": STR}}
    chat_ok = {"content": {"application/json": {"schema": _ref("ChatCompletion")}, **sse}}
    proxy_ok = {"content": {"application/json": {"schema": OBJ}, **sse}}
    upload = {"content": {"multipart/form-data": {"schema": _object(
        ["file", "purpose"], file={"type": "string", "format": "binary"}, purpose={"enum": ["batch"]})}}}
    batch_create = _json(_object(["input_file_id", "endpoint", "completion_window"], input_file_id=STR,
                                 endpoint={"enum": ["/v1/chat/completions"]}, completion_window={"enum": ["24h"]},
                                 metadata={"type": ["object", "null"],
                                           "additionalProperties": {"type": "string", "maxLength": 512}}))
    feedback = _json(_object(["request_id", "score"], request_id={"type": "string", "minLength": 1},
                             score={"type": "number", "minimum": 0, "maximum": 1}))
    return {
        "/v1/chat/completions": {"post": _op("Create a chat completion (routed, metered, recorded)", chat_ok,
                                             "400", "404", "408", "413", "415", "422", "429",
                                             body=_json(_ref("ChatCompletionRequest")))},
        "/v1/embeddings": {"post": _op("Create embeddings (proxied)", _json(OBJ), "400", "404", "408", "413", "415",
                                       "429", body=_proxy_body(models, "input", stream=False))},
        "/v1/completions": {"post": _op("Create a text completion (proxied)", proxy_ok, "400", "404", "408", "413",
                                        "415", "429", body=_proxy_body(models, "prompt", stream=True))},
        "/v1/responses": {"post": _op("Create a response (proxied)", proxy_ok, "400", "404", "408", "413", "415",
                                      "429", body=_proxy_body(models, "input", stream=True))},
        "/v1/models": {"get": _op("List models", _json(_ref("ModelList")))},
        "/v1/models/{model}": {"get": _op("Retrieve a model", _json(_ref("Model")), "404",
                                          params=[{**_path_param("model"), "schema": model_id(models, auto=True)}])},
        "/v1/files": {
            "post": _op("Upload a batch input file", _json(_ref("File")), "400", "413", body=upload),
            "get": _op("List files", _json(_ref("List")), "400",
                       params=[_query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}),
                               _query("order", {"enum": ["asc", "desc"]}), after, _query("purpose", STR)]),
        },
        "/v1/files/{file_id}": {
            "get": _op("Retrieve a file", _json(_ref("File")), "404", params=[file_id]),
            "delete": _op("Delete a file", _json(_object(["id", "object", "deleted"], id=STR, object=STR,
                                                         deleted={"type": "boolean"})), "404", params=[file_id]),
        },
        "/v1/files/{file_id}/content": {"get": _op("Retrieve a file's content",
                                                   {"content": {"application/jsonl": {"schema": STR}}}, "404",
                                                   params=[file_id])},
        "/v1/batches": {
            "post": _op("Create a batch", _json(_ref("Batch")), "400", "404", "408", "413", "415",
                        body=batch_create),
            "get": _op("List batches", _json(_ref("List")), "400", params=[limit, after]),
        },
        "/v1/batches/{batch_id}": {"get": _op("Retrieve a batch", _json(_ref("Batch")), "404", params=[batch_id])},
        "/v1/batches/{batch_id}/cancel": {"post": _op("Cancel a batch", _json(_ref("Batch")), "404",
                                                      params=[batch_id])},
        "/v1/wattwise/feedback": {"post": _op("Record a quality score for a served request",
                                              _json(_object(["request_id", "score"])), "400", "404", "408", "413",
                                              "415", body=feedback)},
        "/healthz": {"get": _op("Liveness", _json(_object(["status"], status={"const": "ok"})))},
        "/metrics": {"get": _op("Prometheus metrics", {"content": {"text/plain": {"schema": STR}}})},
        "/openapi.json": {"get": _op("This document", _json(OBJ))},
    }


def _components(models: tuple[str, ...]) -> dict[str, Any]:
    model = _object(["id", "object", "created", "owned_by"], id=STR, object={"const": "model"},
                    created={"type": "integer"}, owned_by=STR)
    completion = _object(["id", "object", "created", "model", "choices"], id=STR,
                         object={"const": "chat.completion"}, created={"type": "integer"}, model=STR,
                         choices={"type": "array", "items": OBJ}, usage={"type": ["object", "null"]})
    file = _object(["id", "object", "bytes", "created_at", "filename", "purpose"], id=STR, object={"const": "file"},
                   bytes={"type": "integer"}, created_at={"type": "integer"}, filename=STR, purpose=STR)
    batch = _object(["id", "object", "endpoint", "input_file_id", "completion_window", "status"], id=STR,
                    object={"const": "batch"}, endpoint=STR, input_file_id=STR, completion_window=STR, status=STR)
    listing = _object(["object", "data"], object={"const": "list"}, data={"type": "array", "items": OBJ})
    return {"Error": ERROR, "Model": model, "ModelList": {**listing, "properties": {
        "object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}},
        "ChatCompletion": completion, "File": file, "Batch": batch, "List": listing, **_chat_schemas(models)}


@functools.cache
def openapi_document(*, models: tuple[str, ...] = ()) -> dict[str, Any]:
    """The whole document for a gateway serving ``models`` (cached: it depends on code and them only)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("wattwise")
    except PackageNotFoundError:
        release = "0"
    return {
        "openapi": "3.1.0",
        "info": {"title": "wattwise", "version": release,
                 "description": "An OpenAI-compatible LLM gateway that routes, meters cost and energy, and records."},
        "paths": _paths(models),
        "components": {"schemas": _components(models)},
    }


async def openapi_json(request: Request) -> Response:
    return JSONResponse(openapi_document(models=tuple(request.app.state.gateway.backends)))
