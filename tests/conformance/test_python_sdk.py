"""The official openai Python SDK, unmodified, through wattwise to the faithful fake OpenAI."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel
from tests.conformance.conftest import WEATHER_TOOL, Stack, expected_cost
from tests.fake_openai import FINGERPRINT, REASONING, REFUSAL, REPLY, tokenize, vector


class City(BaseModel):
    name: str
    population: int
    coastal: bool


def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.v1, api_key="sk-conformance", max_retries=0, timeout=30)


def ask(marker: str, text: str = "Say something.") -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"{marker} {text}"}]


def test_plain_is_faithful_metered_and_traced(stack: Stack, marker: str) -> None:
    raw = client(stack).chat.completions.with_raw_response.create(
        model="fake", messages=ask(marker), user=f"user-{marker}", max_tokens=50)  # type: ignore[arg-type]
    reply = raw.parse()
    assert reply.choices[0].message.content == REPLY
    assert reply.choices[0].finish_reason == "stop"
    assert reply.system_fingerprint == FINGERPRINT
    assert reply.service_tier == "default"
    sent = stack.log.chat(marker)
    assert sent["model"] == "gpt-4o-fake" and sent["user"] == f"user-{marker}" and sent["max_tokens"] == 50
    assert reply.usage is not None
    usage = reply.usage.model_dump()
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] // 2 > 0
    assert float(raw.headers["x-wattwise-cost-usd"]) == pytest.approx(expected_cost("fake", usage))
    row = stack.trace(marker)
    assert (row.status, row.stream, row.model) == ("ok", False, "fake")
    assert (row.input_tokens, row.cached_input_tokens, row.output_tokens) == (
        usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"], usage["completion_tokens"])
    assert row.cost_usd == pytest.approx(expected_cost("fake", usage))


def test_stream_matches_non_stream(stack: Stack, marker: str) -> None:
    c = client(stack)
    whole = c.chat.completions.create(model="fake", messages=ask(marker, "whole"))  # type: ignore[arg-type]
    chunks = list(c.chat.completions.create(model="fake", messages=ask(marker, "streamed"),  # type: ignore[arg-type]
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content == REPLY
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({ch.id for ch in chunks}) == 1
    assert all(ch.system_fingerprint == FINGERPRINT for ch in chunks)
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == len(tokenize(REPLY))
    sent = stack.log.chat(marker + " streamed")
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    row = stack.trace(marker + " streamed")
    assert row.stream and row.status == "ok" and row.response == REPLY
    assert row.cost_usd == pytest.approx(expected_cost("fake", chunks[-1].usage.model_dump()))


def test_tool_round_trip(stack: Stack, marker: str) -> None:
    c = client(stack)
    messages = ask(marker, "What is the weather in Paris?")
    first = c.chat.completions.create(model="fake", messages=messages, tools=[WEATHER_TOOL])  # type: ignore[arg-type, list-item]
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert stack.log.chat(marker)["tools"] == [WEATHER_TOOL]
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    final = c.chat.completions.create(model="fake", messages=messages, tools=[WEATHER_TOOL])  # type: ignore[arg-type, list-item]
    assert final.choices[0].message.content == "The tool said: 18C and sunny"
    sent = stack.log.chat("18C and sunny")["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id and sent[2]["tool_call_id"] == call.id


def test_tool_round_trip_streamed(stack: Stack, marker: str) -> None:
    c = client(stack)
    messages = ask(marker, "What is the weather in Paris?")
    chunks = list(c.chat.completions.create(model="fake", messages=messages, tools=[WEATHER_TOOL],  # type: ignore[arg-type, list-item]
                                            stream=True))
    pieces = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert len(pieces) > 2, "tool-call arguments must arrive in pieces"
    head = pieces[0]
    assert head.id and head.type == "function" and head.function and head.function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    assert json.loads(arguments) == {"city": "Paris"}
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == [
        "tool_calls"]
    # The SDK's own accumulator must rebuild the same call.
    with c.chat.completions.stream(model="fake", messages=messages, tools=[WEATHER_TOOL]) as s:  # type: ignore[arg-type, list-item]
        final = s.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [{"role": "assistant", "content": None, "tool_calls": [
        {"id": head.id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": head.id, "content": "rainy, 9C"}]
    answer = c.chat.completions.create(model="fake", messages=messages, tools=[WEATHER_TOOL],  # type: ignore[arg-type, list-item]
                                       stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in answer if ch.choices) == "The tool said: rainy, 9C"


def test_structured_output(stack: Stack, marker: str) -> None:
    reply = client(stack).chat.completions.parse(model="fake", messages=ask(marker), response_format=City)  # type: ignore[arg-type]
    assert reply.choices[0].message.parsed == City(name="Paris", population=42, coastal=True)
    fmt = stack.log.chat(marker)["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["properties"].keys() == {"name", "population", "coastal"}


def test_logprobs_plain_and_streamed(stack: Stack, marker: str) -> None:
    c = client(stack)
    reply = c.chat.completions.create(model="fake", messages=ask(marker), logprobs=True, top_logprobs=2)  # type: ignore[arg-type]
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and "".join(t.token for t in content) == REPLY
    assert all(len(t.top_logprobs) == 2 and t.logprob < 0 for t in content)
    sent = stack.log.chat(marker)
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    chunks = list(c.chat.completions.create(model="fake", messages=ask(marker, "streamed"), logprobs=True,  # type: ignore[arg-type]
                                            top_logprobs=2, stream=True))
    streamed = [t for ch in chunks if ch.choices and ch.choices[0].logprobs
                for t in (ch.choices[0].logprobs.content or [])]
    assert [t.model_dump() for t in streamed] == [t.model_dump() for t in content]


def test_refusal_plain_and_streamed(stack: Stack, marker: str) -> None:
    c = client(stack)
    reply = c.chat.completions.create(model="fake", messages=ask(marker, "[[refuse]]"))  # type: ignore[arg-type]
    assert reply.choices[0].message.refusal == REFUSAL and reply.choices[0].message.content is None
    chunks = list(c.chat.completions.create(model="fake", messages=ask(marker, "[[refuse]] now"), stream=True))  # type: ignore[arg-type]
    assert "".join(ch.choices[0].delta.refusal or "" for ch in chunks if ch.choices) == REFUSAL


def test_n_choices(stack: Stack, marker: str) -> None:
    reply = client(stack).chat.completions.create(model="fake", messages=ask(marker), n=2)  # type: ignore[arg-type]
    assert [c.message.content for c in reply.choices] == [REPLY, f"Answer 1: {REPLY}"]
    assert [c.index for c in reply.choices] == [0, 1]
    assert stack.log.chat(marker)["n"] == 2


def test_reasoning_model_usage_cost_and_max_completion_tokens(stack: Stack, marker: str) -> None:
    c = client(stack)
    raw = c.chat.completions.with_raw_response.create(model="thinker", messages=ask(marker),  # type: ignore[arg-type]
                                                      max_completion_tokens=64)
    reply = raw.parse()
    sent = stack.log.chat(marker)
    assert sent["max_completion_tokens"] == 64 and "max_tokens" not in sent
    assert reply.usage is not None
    usage = reply.usage.model_dump()
    assert usage["completion_tokens_details"]["reasoning_tokens"] == len(tokenize(REASONING))
    assert float(raw.headers["x-wattwise-cost-usd"]) == pytest.approx(expected_cost("thinker", usage))
    row = stack.trace(marker)
    assert row.reasoning_tokens == len(tokenize(REASONING))
    assert row.cached_input_tokens == usage["prompt_tokens_details"]["cached_tokens"]
    assert row.cost_usd == pytest.approx(expected_cost("thinker", usage))
    chunks = list(c.chat.completions.create(model="thinker", messages=ask(marker, "streamed"),  # type: ignore[arg-type]
                                            max_completion_tokens=64, stream=True))
    thought = "".join((ch.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                      for ch in chunks if ch.choices)
    assert thought == REASONING
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == REPLY


def test_upstream_400_is_bad_request(stack: Stack, marker: str) -> None:
    c = client(stack)
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="fake", messages=ask(marker, "[[400]]"))  # type: ignore[arg-type]
    assert info.value.status_code == 400
    body: Any = info.value.body
    assert body["param"] == "messages" and "reject" in body["message"]
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="fake", messages=ask(marker, "[[400]] streamed"), stream=True)  # type: ignore[arg-type]
    row = stack.trace(marker + " [[400]]")
    assert row.status == "error" and row.http_status == 400


def test_upstream_429_is_rate_limit_with_headers(stack: Stack, marker: str) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client(stack).chat.completions.create(model="fake", messages=ask(marker, "[[429]]"))  # type: ignore[arg-type]
    headers = info.value.response.headers
    assert headers["retry-after"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0" and headers["x-ratelimit-limit-requests"] == "500"
    body: Any = info.value.body
    assert body["code"] == "rate_limit_exceeded"


def test_embeddings(stack: Stack, marker: str) -> None:
    reply = client(stack).embeddings.create(model="fake", input=[marker, "second"])
    assert [d.index for d in reply.data] == [0, 1]
    assert reply.data[0].embedding == pytest.approx(vector(json.dumps(marker), 8), abs=1e-6)
    sent = stack.log.chat(marker, path="/v1/embeddings")
    assert sent["model"] == "gpt-4o-fake" and sent["input"] == [marker, "second"]
    assert reply.usage.prompt_tokens == 2


def test_legacy_completions(stack: Stack, marker: str) -> None:
    c = client(stack)
    reply = c.completions.create(model="fake", prompt=f"{marker} Once upon a time", max_tokens=4)
    assert reply.choices[0].text == "".join(tokenize(REPLY)[:4]) and reply.choices[0].finish_reason == "length"
    assert stack.log.chat(marker, path="/v1/completions")["max_tokens"] == 4
    streamed = c.completions.create(model="fake", prompt=f"{marker} again", max_tokens=4, stream=True)
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == reply.choices[0].text


def test_responses_api(stack: Stack, marker: str) -> None:
    c = client(stack)
    reply = c.responses.create(model="fake", input=f"{marker} Say something.", instructions="Be brief.")
    assert reply.output_text == REPLY
    assert reply.usage is not None and reply.usage.input_tokens_details.cached_tokens == reply.usage.input_tokens // 2
    sent = stack.log.chat(marker, path="/v1/responses")
    assert sent["model"] == "gpt-4o-fake" and sent["instructions"] == "Be brief."
    events = list(c.responses.create(model="fake", input=f"{marker} streamed", stream=True))
    assert "".join(getattr(e, "delta", "") for e in events if e.type == "response.output_text.delta") == REPLY
    assert events[-1].type == "response.completed"


def test_models_list(stack: Stack) -> None:
    ids = {m.id for m in client(stack).models.list()}
    assert {"fake", "thinker"} <= ids
