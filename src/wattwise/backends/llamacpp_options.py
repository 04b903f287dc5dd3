"""What a chat request asks of llama.cpp: each client field mapped to a llama.cpp knob, or refused.

A field the local backend cannot honour is a 400 naming it, never silently dropped. Honoured:
``response_format`` (``text``, ``json_object``, ``json_schema``) as a GBNF grammar, ``logprobs`` and
``top_logprobs`` (0..20), ``tools`` with ``tool_choice`` ``required`` or named, as a grammar-constrained call
(``auto`` is refused: the model cannot decide honestly),
``presence_penalty``, ``frequency_penalty``, ``logit_bias`` and llama.cpp's own ``top_k``,
``min_p``, ``repeat_penalty``. Accepted as metadata that does not change the answer: see
:data:`METADATA`. Everything else in ``ChatRequest.extra`` is refused.

Usage::

    plan = plan_request(request, model="smol")   # raises InvalidRequest(param="...") when refused
    plan.knobs, plan.grammar, plan.top_logprobs, plan.tools
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from wattwise.backends.base import ChatRequest
from wattwise.exceptions import InvalidRequest

# Fields that describe the call rather than the answer: accepted, with no effect on generation.
METADATA = frozenset({"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"})
_NUMBERS = {"presence_penalty": (-2.0, 2.0), "frequency_penalty": (-2.0, 2.0), "min_p": (0.0, 1.0),
            "repeat_penalty": (0.0, 10.0)}
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """The tools the model must call one of (``required``, or the one ``tool_choice`` names)."""

    tools: list[dict[str, Any]]

    def names(self) -> list[str]:
        return [t["name"] for t in self.tools]


@dataclass(frozen=True, slots=True)
class Plan:
    knobs: dict[str, Any] = field(default_factory=dict)
    grammar: str | None = None
    top_logprobs: int | None = None
    tools: ToolPlan | None = None


def _refuse(name: str, why: str, model: str) -> InvalidRequest:
    return InvalidRequest(f"'{name}' {why} by the llama.cpp backend (model '{model}')", param=name,
                          code="unsupported_parameter")


def plan_request(request: ChatRequest, *, model: str) -> Plan:
    """Map every field of ``request.extra``; raise :class:`InvalidRequest` naming the first refused."""
    extra = request.extra
    knobs: dict[str, Any] = {}
    for name, value in extra.items():
        if name in METADATA or name in ("response_format", "tools", "tool_choice", "parallel_tool_calls",
                                        "top_logprobs") or value is None:
            continue
        if name in _NUMBERS:
            low, high = _NUMBERS[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise InvalidRequest(f"'{name}' must be a number in [{low}, {high}]", param=name)
            knobs[name] = float(value)
        elif name == "top_k":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidRequest("'top_k' must be a non-negative integer", param=name)
            knobs[name] = value
        elif name == "logit_bias":
            knobs[name] = _logit_bias(value)
        else:
            raise _refuse(name, "is not supported", model)
    tools = _tools(extra, model)
    grammar = _response_grammar(extra.get("response_format"), model)
    if tools is not None and grammar is not None:
        raise _refuse("response_format", "cannot be combined with tools", model)
    if tools is not None:
        grammar = tool_grammar(tools, model)
    return Plan(knobs=knobs, grammar=grammar, top_logprobs=_top_logprobs(request), tools=tools)


def _logit_bias(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise InvalidRequest("'logit_bias' must map token ids to numbers", param="logit_bias")
    out: dict[str, float] = {}
    for key, bias in value.items():
        if not str(key).isdigit() or isinstance(bias, bool) or not isinstance(bias, int | float) \
                or not -100 <= bias <= 100:
            raise InvalidRequest("'logit_bias' must map token ids to numbers in [-100, 100]", param="logit_bias")
        out[str(int(key))] = float(bias)
    return out


def _top_logprobs(request: ChatRequest) -> int | None:
    top = request.extra.get("top_logprobs")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20):
        raise InvalidRequest("'top_logprobs' must be an integer in [0, 20]", param="top_logprobs")
    if top is not None and not request.logprobs:
        raise InvalidRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return (top or 0) if request.logprobs else None


def _response_grammar(spec: Any, model: str) -> str | None:
    if spec is None:
        return None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return json_grammar({"type": "object"}, model)
    if kind == "json_schema" and isinstance(spec.get("json_schema"), dict):
        schema = spec["json_schema"].get("schema", {"type": "object"})
        return json_grammar(schema, model)
    raise _refuse("response_format", f"of type {kind!r} is not supported", model)


def json_grammar(schema: Any, model: str, *, param: str = "response_format") -> str:
    """llama.cpp's GBNF for a JSON schema; a schema it cannot convert is the caller's 400."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # heavy import, deferred to use

    try:
        return json_schema_to_gbnf(json.dumps(schema), prop_order=["name", "arguments"])
    except Exception as exc:  # the converter raises bare Exception/ValueError/KeyError alike
        raise InvalidRequest(f"'{param}': schema not supported by the llama.cpp backend (model '{model}'): "
                             f"{exc}", param=param) from None


def _tools(extra: dict[str, Any], model: str) -> ToolPlan | None:
    raw, choice = extra.get("tools"), extra.get("tool_choice")
    if raw is None:
        if choice is not None:
            raise InvalidRequest("'tool_choice' needs 'tools'", param="tool_choice")
        return None
    tools: list[dict[str, Any]] = []
    for i, item in enumerate(raw if isinstance(raw, list) else [None]):
        fn = item.get("function") if isinstance(item, dict) and item.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not _TOOL_NAME.match(fn["name"]):
            raise InvalidRequest(f"'tools[{i}]' must be a function with a name of [A-Za-z0-9_-]{{1,64}}",
                                 param=f"tools[{i}]")
        tools.append({"name": fn["name"], "description": fn.get("description", ""),
                      "parameters": fn.get("parameters") or {"type": "object", "properties": {}}})
    if not tools:
        raise InvalidRequest("'tools' must not be empty", param="tools")
    if choice in (None, "auto"):
        # Tried: with a grammar allowing text or a call, SmolLM2-135M answers "weather in Paris?" in
        # prose; letting it decide would silently never call. The client can force a call instead.
        raise InvalidRequest(f"'tool_choice' 'auto' (the default with 'tools') is not supported by the llama.cpp "
                             f"backend (model '{model}'): the model does not decide reliably when to call a tool; "
                             "send 'tool_choice': 'required' or a named function",
                             param="tool_choice" if choice else "tools", code="unsupported_parameter")
    if choice == "none":
        return None
    if choice == "required":
        return ToolPlan(tools=tools)
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    chosen = [t for t in tools if t["name"] == name]
    if not chosen:
        raise InvalidRequest(f"'tool_choice' names no tool in 'tools': {name!r}", param="tool_choice")
    return ToolPlan(tools=chosen)


def tool_grammar(plan: ToolPlan, model: str) -> str:
    """Exactly one ``{"name": ..., "arguments": {...}}`` object, valid for one of the tools."""
    calls = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
              "properties": {"name": {"const": t["name"]}, "arguments": t["parameters"]}} for t in plan.tools]
    return json_grammar({"anyOf": calls} if len(calls) > 1 else calls[0], model, param="tools")


def tool_prompt(plan: ToolPlan) -> str:
    """The system text that tells the model its tools and the one reply format the grammar allows."""
    listed = json.dumps([{k: t[k] for k in ("name", "description", "parameters")} for t in plan.tools])
    return (f"You have these tools: {listed}\nCall one of them: reply with only a JSON object "
            '{"name": <tool name>, "arguments": <arguments object>}.')


def chat_messages(messages: list[dict[str, Any]], tools: ToolPlan | None) -> list[dict[str, Any]]:
    """Messages as a chat template renders them: text content, tool calls written as the model writes them."""
    out = [_message(i, m) for i, m in enumerate(messages)]
    if tools is not None:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{tool_prompt(tools)}"}
        else:
            out.insert(0, {"role": "system", "content": tool_prompt(tools)})
    return out


def _message(i: int, message: dict[str, Any]) -> dict[str, Any]:
    role = "system" if message.get("role") == "developer" else message.get("role", "user")
    content = message.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidRequest(f"'messages[{i}].content[{j}]': only text parts are supported by the "
                                     "llama.cpp backend", param=f"messages[{i}].content[{j}]")
        content = "".join(str(p.get("text", "")) for p in content)
    calls = message.get("tool_calls") or []
    if calls:
        written = [json.dumps({"name": c.get("function", {}).get("name"),
                               "arguments": _arguments(c.get("function", {}).get("arguments"))}) for c in calls]
        content = "\n".join(([content] if content else []) + written)
    return {"role": role, "content": content or ""}


def _arguments(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else (text or {})
    except ValueError:
        return text


def parse_call(text: str, plan: ToolPlan) -> dict[str, Any] | None:
    """The tool call a reply holds, as OpenAI's ``function`` object; None when it is not one."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("name") not in plan.names() or "arguments" not in data:
        return None
    return {"name": data["name"], "arguments": json.dumps(data["arguments"])}
