"""The LiteLLM SDK (``litellm.completion``, provider ``openai/``), unmodified, through wattwise to the fake OpenAI."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from pydantic import BaseModel
from tests.conformance.conftest import WEATHER_TOOL, Stack, expected_cost, import_client
from tests.fake_openai import FINGERPRINT, REASONING, REPLY, tokenize

# LiteLLM's own stream wrapper touches a deprecated pydantic attribute; that warning is LiteLLM's, not ours.
pytestmark = [pytest.mark.filterwarnings(
    r"ignore:Accessing the 'model_(computed_)?fields' attribute:pydantic.warnings.PydanticDeprecatedSince211"),
    pytest.mark.usefixtures("own_event_loop")]


class City(BaseModel):
    name: str
    population: int


@pytest.fixture(scope="module")
def litellm() -> Any:
    # The bundled cost map, not a download at import; no telemetry, no retries hiding what the gateway said.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    module = import_client("litellm", "litellm")
    module.telemetry = False
    module.num_retries = 0
    return module


def complete(litellm: Any, stack: Stack, model: str = "fake", **kw: Any) -> Any:
    return litellm.completion(model=f"openai/{model}", api_base=stack.v1, api_key="sk-conformance", max_retries=0,
                              timeout=30, **kw)


def ask(marker: str, text: str = "Say something.") -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"{marker} {text}"}]


def test_plain_usage_cost_and_user(litellm: Any, stack: Stack, marker: str) -> None:
    # LiteLLM drops `user` for a model name it does not know (ours is "fake"), so it goes in extra_body.
    reply = complete(litellm, stack, messages=ask(marker), extra_body={"user": f"user-{marker}"})
    assert reply.choices[0].message.content == REPLY
    assert reply.system_fingerprint == FINGERPRINT
    usage = reply.usage.model_dump()
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] // 2 > 0
    headers = reply._hidden_params["additional_headers"]
    assert float(headers["llm_provider-x-wattwise-cost-usd"]) == pytest.approx(expected_cost("fake", usage))
    sent = stack.log.chat(marker)
    assert sent["model"] == "gpt-4o-fake" and sent["user"] == f"user-{marker}"
    assert stack.trace(marker).cost_usd == pytest.approx(expected_cost("fake", usage))


def test_stream_matches_plain(litellm: Any, stack: Stack, marker: str) -> None:
    whole = complete(litellm, stack, messages=ask(marker, "whole"))
    chunks = list(complete(litellm, stack, messages=ask(marker, "streamed"), stream=True,
                           stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content == REPLY
    rebuilt = litellm.stream_chunk_builder(chunks)
    assert rebuilt.usage.completion_tokens == whole.usage.completion_tokens == len(tokenize(REPLY))
    assert stack.log.chat(marker + " streamed")["stream"] is True
    assert stack.trace(marker + " streamed").response == REPLY


@pytest.mark.parametrize("streamed", [False, True])
def test_tool_round_trip(litellm: Any, stack: Stack, marker: str, streamed: bool) -> None:
    messages = ask(marker, "What is the weather in Paris?")
    if streamed:
        chunks = list(complete(litellm, stack, messages=messages, tools=[WEATHER_TOOL], stream=True))
        pieces = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert len(pieces) > 2, "tool-call arguments must arrive in pieces"
        message = litellm.stream_chunk_builder(chunks).choices[0].message
    else:
        reply = complete(litellm, stack, messages=messages, tools=[WEATHER_TOOL])
        assert reply.choices[0].finish_reason == "tool_calls"
        message = reply.choices[0].message
    [call] = message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    function = {"name": "get_weather", "arguments": call.function.arguments}
    messages += [{"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function",
                                                                         "function": function}]},
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    final = complete(litellm, stack, messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].message.content == "The tool said: 18C and sunny"
    assert stack.log.chat(marker)["messages"][-1]["tool_call_id"] == call.id


def test_structured_output(litellm: Any, stack: Stack, marker: str) -> None:
    reply = complete(litellm, stack, messages=ask(marker), response_format=City)
    assert City.model_validate_json(reply.choices[0].message.content) == City(name="Paris", population=42)
    assert stack.log.chat(marker)["response_format"]["type"] == "json_schema"


def test_logprobs(litellm: Any, stack: Stack, marker: str) -> None:
    reply = complete(litellm, stack, messages=ask(marker), logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs["content"]
    assert "".join(t["token"] for t in content) == REPLY and all(len(t["top_logprobs"]) == 2 for t in content)
    sent = stack.log.chat(marker)
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2


def test_reasoning_usage_and_max_completion_tokens(litellm: Any, stack: Stack, marker: str) -> None:
    reply = complete(litellm, stack, model="thinker", messages=ask(marker), max_completion_tokens=64)
    sent = stack.log.chat(marker)
    assert sent["max_completion_tokens"] == 64 and "max_tokens" not in sent
    usage = reply.usage.model_dump()
    assert usage["completion_tokens_details"]["reasoning_tokens"] == len(tokenize(REASONING))
    assert stack.trace(marker).cost_usd == pytest.approx(expected_cost("thinker", usage))


def test_errors_are_litellm_exceptions(litellm: Any, stack: Stack, marker: str) -> None:
    with pytest.raises(litellm.BadRequestError) as bad:
        complete(litellm, stack, messages=ask(marker, "[[400]]"))
    assert bad.value.status_code == 400
    with pytest.raises(litellm.RateLimitError) as limited:
        complete(litellm, stack, messages=ask(marker, "[[429]]"))
    assert limited.value.status_code == 429
