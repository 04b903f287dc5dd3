"""What makes two requests the same request: the cache's canonical key, tenancy and eligibility.

The **exact key** hashes everything that decides the answer: the model asked for (with the
routing inputs of ``auto``: quality target, cost cap, and the tag and user its per-application
adjustment keys on), the messages, and every sampling field the
client sent (tools, tool choice, response format, temperature, seed, max tokens, stop, logprobs,
penalties, and fields wattwise does not know, which may matter upstream). Fields that do not change
the answer are left out: ``stream`` (a streamed hit is replayed), ``stream_options``, ``user``,
``metadata``, ``store``.

The **semantic split**: the last message, if it is a user's text, is what the semantic cache
compares by meaning; everything else (system prompt, earlier turns, tools, format, sampling) must
match exactly and is hashed into ``context``, so a semantic hit can only differ in that last text.

The **namespace** keeps tenants apart: by default each API key has its own entries (a cache never
answers one tenant with another's data); ``share = "team"`` pools a team's keys, ``"all"`` every
caller.

Usage::

    parts = request_key(body, namespace=namespace_of(principal, share="key"))
    parts.exact            # sha256 hex of the canonical request
    parts.context, parts.text   # the semantic split (None when the last message is not user text)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from wattwise.request import ChatBody

Share = Literal["key", "team", "all"]
Mode = Literal["off", "exact", "semantic"]

# Client fields that never change the answer (the rest of what the client sent is part of the key).
NOT_KEYED = frozenset({"stream_options", "user", "metadata", "store", "safety_identifier", "prompt_cache_key"})


@dataclass(frozen=True, slots=True)
class RequestKey:
    """One request's cache identity: ``exact`` for the exact cache; ``context`` and ``text`` for the
    semantic cache (``text`` is the last user message; ``None`` when it has none)."""

    namespace: str
    exact: str
    context: str
    text: str | None


def namespace_of(principal: Any, *, share: Share) -> str:
    """The tenant an entry belongs to: the key (default), the key's team, or everyone."""
    if share == "all":
        return "*"
    key_id = getattr(principal, "key_id", None)
    team = getattr(principal, "team", None)
    if share == "team" and team:
        return "team:" + team
    return "key:" + key_id if key_id else "key:-"


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def _last_user_text(message: dict[str, Any]) -> str | None:
    if message.get("role") != "user":
        return None
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    return None  # images, audio, files: only the exact cache


def request_key(body: ChatBody, *, namespace: str) -> RequestKey:
    """The canonical key of ``body`` in ``namespace`` (see the module's docstring)."""
    messages = [m.model_dump(exclude_none=True, by_alias=True) for m in body.messages]
    fields = {k: v for k, v in body.sent().items() if k not in NOT_KEYED}
    # For auto, what the router reads besides the prompt: the dial, and the application key its
    # per-application adjustment uses (tag, user); the same prompt may go to another model for another app.
    routing = ({"quality_target": body.wattwise.quality_target, "max_cost_usd": body.wattwise.max_cost_usd,
                "tag": body.wattwise.tag, "user": body.user}
               if body.model == "auto" or body.model.startswith("auto:") else {})
    base = {"ns": namespace, "model": body.model, "routing": routing, "fields": fields}
    exact = _digest({**base, "messages": messages})
    text = _last_user_text(messages[-1])
    context = _digest({**base, "messages": messages[:-1] if text is not None else messages})
    return RequestKey(namespace=namespace, exact=exact, context=context, text=text)


def payload_key(path: str, data: dict[str, Any], *, namespace: str) -> RequestKey:
    """The key of another endpoint's request (``/embeddings``): its path and every field sent but
    those that never change the answer."""
    fields = {k: v for k, v in data.items() if k not in NOT_KEYED}
    exact = _digest({"ns": namespace, "path": path, "fields": fields})
    return RequestKey(namespace=namespace, exact=exact, context=exact, text=None)


def deterministic(body: ChatBody) -> bool:
    """Whether the request asks for a reproducible answer: temperature 0, or a fixed ``seed``."""
    return body.temperature == 0 or body.seed is not None
