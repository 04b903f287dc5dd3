"""A cached answer and what it takes to trust it again.

An :class:`Entry` keeps the answer as OpenAI's ``chat.completion`` body without its per-request
fields (``id``, ``created``, ``model``, ``wattwise``), the configured model that gave it and that
model's *fingerprint* (upstream model name, URL, weights: a changed upstream is a different model,
and its old answers are stale), the request it came from (a hit names it), what the answer cost (a
hit saves that much), and for the semantic cache the query's vector and guard features.

:class:`StreamAnswer` rebuilds a streamed answer's message from its chunks (content, refusal and
reasoning text joined, tool calls merged by index, logprobs concatenated), so a streamed answer can
be cached and later served to a non-streamed request, and the other way round.

Usage::

    entry = Entry(key="ab12…", namespace="key:k1", context="cd34…", body=body, model="small",
                  fingerprint="…", request_id="req_1", created=now, expires=now + 86400)
    Entry.from_json(entry.to_json()) == entry
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from wattwise.config import ModelConfig

PER_REQUEST = ("id", "created", "model", "wattwise")


def fingerprint(spec: ModelConfig) -> str:
    """What identifies a configured model's answers: its backend, upstream name, URL(s) and weights."""
    ident = {"backend": spec.backend, "upstream_model": spec.upstream_model, "base_url": spec.base_url,
             "replicas": [r.base_url for r in spec.replicas], "model_path": spec.model_path,
             "model_package": spec.model_package, "source_model": spec.source_model, "outcomes": spec.outcomes,
             "options": spec.options}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(kw_only=True)
class Entry:
    key: str
    namespace: str
    context: str
    body: dict[str, Any]
    model: str
    fingerprint: str
    request_id: str
    created: float
    expires: float
    upstream_model: str | None = None  # the model the upstream named in its answer (its version)
    key_id: str | None = None
    team: str | None = None
    tag: str | None = None
    cost_usd: float | None = None
    energy_j: float | None = None
    features: dict[str, Any] | None = None  # the semantic guard's features of the query text
    size: int = 0  # bytes of its JSON, for the in-process store's memory bound
    vector: np.ndarray | None = field(default=None, compare=False)

    def to_json(self, *, with_vector: bool = True) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "vector"}
        if with_vector and self.vector is not None:
            data["vector"] = pack_vector(self.vector)
        # ASCII escapes: any text the answer holds (a NUL, a lone surrogate) survives a bytes store.
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Entry:
        data = json.loads(text)
        vector = data.pop("vector", None)
        names = {f.name for f in fields(cls)}
        entry = cls(**{k: v for k, v in data.items() if k in names})
        entry.vector = unpack_vector(vector) if vector else None
        return entry

    def matches(self, *, key_id: str | None = None, team: str | None = None, tag: str | None = None,
                model: str | None = None, namespace: str | None = None) -> bool:
        """Whether every given filter matches (a purge's selection)."""
        wanted = {"key_id": key_id, "team": team, "tag": tag, "model": model, "namespace": namespace}
        return all(getattr(self, name) == value for name, value in wanted.items() if value is not None)


def pack_vector(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode()


def unpack_vector(text: str | bytes) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.float32).copy()


def stored_body(body: dict[str, Any]) -> dict[str, Any]:
    """A response body without its per-request fields."""
    return {k: v for k, v in body.items() if k not in PER_REQUEST}


class StreamAnswer:
    """The first choice of a streamed answer, rebuilt from its chunks' deltas.

    ``ok`` turns false when a delta holds something this cannot merge faithfully (then the answer is
    not cached: a cache never serves what it could not keep whole).
    """

    TEXT = ("content", "refusal", "reasoning_content", "reasoning")

    def __init__(self) -> None:
        self.message: dict[str, Any] = {"role": "assistant", "content": None}
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: dict[str, list[Any]] | None = None
        self.top: dict[str, Any] = {}
        self.ok = True

    def add(self, delta: dict[str, Any], logprobs: dict[str, Any] | None = None,
            chunk: dict[str, Any] | None = None) -> None:
        for name, value in delta.items():
            if value is None or name == "role":
                continue
            if name in self.TEXT and isinstance(value, str):
                self.message[name] = (self.message.get(name) or "") + value
            elif name == "tool_calls" and isinstance(value, list):
                self._tool_calls(value)
            else:
                self.ok = False
        if logprobs:
            self.logprobs = self.logprobs or {}
            for name, value in logprobs.items():
                if isinstance(value, list):
                    self.logprobs.setdefault(name, []).extend(value)
        if chunk:
            for name in ("system_fingerprint", "service_tier"):
                if chunk.get(name) is not None:
                    self.top[name] = chunk[name]

    def _tool_calls(self, parts: list[Any]) -> None:
        for part in parts:
            if not isinstance(part, dict) or not isinstance(part.get("index", 0), int):
                self.ok = False
                return
            call = self.tool_calls.setdefault(part.get("index", 0), {"function": {"name": "", "arguments": ""}})
            for name in ("id", "type"):
                if part.get(name):
                    call[name] = part[name]
            function = part.get("function") or {}
            for name in ("name", "arguments"):
                if isinstance(function.get(name), str):
                    call["function"][name] += function[name]

    def body(self, *, finish_reason: str, usage: dict[str, Any] | None) -> dict[str, Any]:
        message = dict(self.message)
        if self.tool_calls:
            message["tool_calls"] = [{"id": c.get("id", ""), "type": c.get("type", "function"),
                                      "function": c["function"]} for _, c in sorted(self.tool_calls.items())]
        return {"object": "chat.completion", **self.top,
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason,
                             "logprobs": self.logprobs}],
                "usage": usage}
