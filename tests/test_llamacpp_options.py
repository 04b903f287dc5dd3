"""The llama.cpp backend's field mapping: what it honours, and a 400 naming every field it cannot.

No model is loaded: a refused request fails before generation starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wattwise.backends.base import ChatRequest
from wattwise.backends.llamacpp import LlamaCppBackend
from wattwise.backends.llamacpp_options import (
    METADATA,
    ToolPlan,
    chat_messages,
    parse_call,
    plan_request,
)
from wattwise.exceptions import InvalidRequest

MESSAGES = [{"role": "user", "content": "Hi"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def request(logprobs: bool = False, **extra: Any) -> ChatRequest:
    return ChatRequest(messages=MESSAGES, logprobs=logprobs, extra=extra)


def refused(req: ChatRequest) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        plan_request(req, model="smol")
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize("name, value", [
    ("n_probs", 3), ("modalities", ["audio"]), ("audio", {"voice": "alloy"}), ("prediction", {"type": "content"}),
    ("reasoning_effort", "low"), ("functions", [{"name": "f"}]), ("function_call", "auto"),
    ("web_search_options", {}), ("verbosity", "low"),
])
def test_a_field_the_backend_cannot_honour_is_a_400_naming_it(name: str, value: Any) -> None:
    error = refused(request(**{name: value}))
    assert error.param == name and name in error.message and "smol" in error.message


@pytest.mark.parametrize("spec", [{"type": "json_schema"}, {"type": "xml"}, "json", {"type": "json_schema",
                                                                                      "json_schema": "x"}])
def test_unsupported_response_format_is_a_400(spec: Any) -> None:
    assert refused(request(response_format=spec)).param == "response_format"


def test_response_format_becomes_a_json_grammar() -> None:
    assert plan_request(request(response_format={"type": "text"}), model="m").grammar is None
    assert "root ::=" in (plan_request(request(response_format={"type": "json_object"}), model="m").grammar or "")
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    grammar = plan_request(request(response_format={"type": "json_schema", "json_schema": {
        "name": "p", "schema": schema}}), model="m").grammar
    assert grammar is not None and '"\\"age\\""' in grammar


@pytest.mark.parametrize("extra, logprobs, param", [
    ({"top_logprobs": 21}, True, "top_logprobs"), ({"top_logprobs": -1}, True, "top_logprobs"),
    ({"top_logprobs": 2}, False, "top_logprobs"), ({"presence_penalty": 3}, False, "presence_penalty"),
    ({"frequency_penalty": "x"}, False, "frequency_penalty"), ({"logit_bias": {"a": 1}}, False, "logit_bias"),
    ({"logit_bias": {"5": 101}}, False, "logit_bias"), ({"top_k": -1}, False, "top_k"),
])
def test_out_of_range_knobs_are_a_400(extra: dict[str, Any], logprobs: bool, param: str) -> None:
    assert refused(request(logprobs, **extra)).param == param


def test_knobs_llama_cpp_has_are_mapped() -> None:
    plan = plan_request(request(True, top_logprobs=3, presence_penalty=0.5, frequency_penalty=-1,
                                logit_bias={"42": -100}, top_k=20, min_p=0.1, repeat_penalty=1.2,
                                user="u", metadata={"a": "b"}, store=False, service_tier="auto",
                                parallel_tool_calls=False), model="m")
    assert plan.top_logprobs == 3
    assert plan.knobs == {"presence_penalty": 0.5, "frequency_penalty": -1.0, "logit_bias": {"42": -100.0},
                          "top_k": 20, "min_p": 0.1, "repeat_penalty": 1.2}
    assert plan_request(request(True), model="m").top_logprobs == 0
    assert plan_request(request(False), model="m").top_logprobs is None
    assert {"user", "metadata", "store", "service_tier"} <= METADATA


def test_tools_need_a_forced_choice_auto_is_refused() -> None:
    assert refused(request(tools=[WEATHER])).param == "tools"
    assert refused(request(tools=[WEATHER], tool_choice="auto")).param == "tool_choice"
    assert refused(request(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
                   ).param == "tool_choice"
    assert refused(request(tool_choice="required")).param == "tool_choice"
    assert refused(request(tools=[{"type": "function", "function": {"name": "bad name"}}],
                           tool_choice="required")).param == "tools[0]"
    assert refused(request(tools=[WEATHER], tool_choice="required",
                           response_format={"type": "json_object"})).param == "response_format"
    assert plan_request(request(tools=[WEATHER], tool_choice="none"), model="m").tools is None


def test_a_required_tool_call_is_grammar_constrained() -> None:
    plan = plan_request(request(tools=[WEATHER, {"type": "function", "function": {"name": "now"}}],
                                tool_choice="required"), model="m")
    assert plan.tools is not None and plan.tools.names() == ["get_weather", "now"]
    assert plan.grammar is not None and "get_weather" in plan.grammar and "now" in plan.grammar
    named = plan_request(request(tools=[WEATHER, {"type": "function", "function": {"name": "now"}}],
                                 tool_choice={"type": "function", "function": {"name": "now"}}), model="m")
    assert named.tools is not None and named.tools.names() == ["now"]


def test_messages_are_rendered_as_text_with_tool_calls_written_out() -> None:
    plan = ToolPlan(tools=[{"name": "get_weather", "description": "", "parameters": {}}])
    out = chat_messages([
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "here?"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c", "content": "4C"},
    ], plan)
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.")
    assert "get_weather" in out[0]["content"]
    assert out[1] == {"role": "user", "content": "Weather here?"}
    assert json.loads(out[2]["content"]) == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert out[3] == {"role": "tool", "content": "4C"}
    with pytest.raises(InvalidRequest) as caught:
        chat_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], None)
    assert caught.value.param == "messages[0].content[0]"


def test_parse_call() -> None:
    plan = ToolPlan(tools=[{"name": "f", "description": "", "parameters": {}}])
    assert parse_call('{"name": "f", "arguments": {"x": 1}}', plan) == {"name": "f", "arguments": '{"x": 1}'}
    assert parse_call('{"name": "f", "arguments": {"x"', plan) is None
    assert parse_call('{"name": "g", "arguments": {}}', plan) is None


@pytest.mark.anyio
async def test_the_backend_refuses_before_loading_the_model(tmp_path: Path) -> None:
    backend = LlamaCppBackend(name="smol", model_path=tmp_path / "absent.gguf")
    with pytest.raises(InvalidRequest) as caught:
        await backend.complete(request(modalities=["audio"]))
    assert caught.value.param == "modalities"
    with pytest.raises(InvalidRequest) as caught:
        async for _ in backend.stream(request(tools=[WEATHER])):
            pass
    assert caught.value.param == "tools"
    assert backend._llama is None


def test_the_built_in_fleet_has_no_base_model() -> None:
    # Gemma 3 270M from PyPI is the pre-trained base model: it answered chat with garbage.
    from wattwise.config import default_config

    assert set(default_config().models) == {"smollm2-135m"}
