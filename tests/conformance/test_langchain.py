"""LangChain's ``ChatOpenAI`` (langchain-openai), unmodified, through wattwise to the faithful fake OpenAI."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel
from tests.conformance.conftest import WEATHER_TOOL, Stack, expected_cost, import_client
from tests.fake_openai import FINGERPRINT, REASONING, REPLY, tokenize


class City(BaseModel):
    name: str
    population: int


def chat(stack: Stack, **kw: Any) -> Any:
    module = import_client("langchain_openai", "langchain-openai")
    kw.setdefault("model", "fake")
    return module.ChatOpenAI(base_url=stack.v1, api_key="sk-conformance", max_retries=0, timeout=30, **kw)


def test_invoke_usage_cost_and_user(stack: Stack, marker: str) -> None:
    reply = chat(stack, include_response_headers=True, model_kwargs={"user": f"user-{marker}"}).invoke(
        f"{marker} Say something.")
    assert reply.content == REPLY
    assert reply.response_metadata["system_fingerprint"] == FINGERPRINT
    assert reply.response_metadata["finish_reason"] == "stop"
    usage = reply.response_metadata["token_usage"]
    assert reply.usage_metadata["input_token_details"]["cache_read"] == usage["prompt_tokens"] // 2 > 0
    assert float(reply.response_metadata["headers"]["x-wattwise-cost-usd"]) == pytest.approx(
        expected_cost("fake", usage))
    assert stack.log.chat(marker)["user"] == f"user-{marker}"
    assert stack.trace(marker).cost_usd == pytest.approx(expected_cost("fake", usage))


def test_stream_matches_invoke(stack: Stack, marker: str) -> None:
    model = chat(stack, stream_usage=True)
    whole = model.invoke(f"{marker} whole")
    chunks = list(model.stream(f"{marker} streamed"))
    assert len(chunks) > 3
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content == whole.content == REPLY
    assert merged.usage_metadata["output_tokens"] == whole.usage_metadata["output_tokens"] == len(tokenize(REPLY))
    assert merged.usage_metadata["input_token_details"]["cache_read"] == whole.usage_metadata[
        "input_token_details"]["cache_read"]
    assert stack.log.chat(marker + " streamed")["stream"] is True
    assert stack.trace(marker + " streamed").response == REPLY


@pytest.mark.parametrize("streamed", [False, True])
def test_tool_round_trip(stack: Stack, marker: str, streamed: bool) -> None:
    messages_mod = import_client("langchain_core.messages", "langchain-core")
    model = chat(stack).bind_tools([WEATHER_TOOL])
    history: list[Any] = [messages_mod.HumanMessage(f"{marker} What is the weather in Paris?")]
    if streamed:
        chunks = list(model.stream(history))
        assert sum(1 for c in chunks if c.tool_call_chunks) > 2, "tool-call arguments must arrive in pieces"
        first = chunks[0]
        for chunk in chunks[1:]:
            first += chunk
    else:
        first = model.invoke(history)
    [call] = first.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"} and call["id"]
    history += [first, messages_mod.ToolMessage("18C and sunny", tool_call_id=call["id"])]
    final = "".join(str(c.content) for c in model.stream(history)) if streamed else model.invoke(history).content
    assert final == "The tool said: 18C and sunny"
    sent = stack.log.chat(marker)["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"}
    assert json.loads(sent[-2]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}


def test_structured_output(stack: Stack, marker: str) -> None:
    parsed = chat(stack).with_structured_output(City, method="json_schema", strict=True).invoke(f"{marker} A city.")
    assert parsed == City(name="Paris", population=42)
    assert stack.log.chat(marker)["response_format"]["type"] == "json_schema"


def test_logprobs(stack: Stack, marker: str) -> None:
    reply = chat(stack, logprobs=True, top_logprobs=2).invoke(f"{marker} Say something.")
    content = reply.response_metadata["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == REPLY and all(len(t["top_logprobs"]) == 2 for t in content)


def test_reasoning_model_max_completion_tokens_and_cost(stack: Stack, marker: str) -> None:
    reply = chat(stack, model="thinker", max_tokens=64, include_response_headers=True).invoke(f"{marker} Think.")
    sent = stack.log.chat(marker)
    assert sent["max_completion_tokens"] == 64 and "max_tokens" not in sent
    assert reply.usage_metadata["output_token_details"]["reasoning"] == len(tokenize(REASONING))
    usage = reply.response_metadata["token_usage"]
    assert float(reply.response_metadata["headers"]["x-wattwise-cost-usd"]) == pytest.approx(
        expected_cost("thinker", usage))
    assert stack.trace(marker).reasoning_tokens == len(tokenize(REASONING))


def test_errors_are_openai_exceptions(stack: Stack, marker: str) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        chat(stack).invoke(f"{marker} [[400]]")
    assert bad.value.status_code == 400
    with pytest.raises(openai.RateLimitError) as limited:
        chat(stack).invoke(f"{marker} [[429]]")
    assert limited.value.response.headers["retry-after"] == "1"
