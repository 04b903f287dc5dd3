"""simonw's ``llm`` CLI, unmodified, through wattwise to the faithful fake OpenAI.

wattwise is registered as an OpenAI-compatible model in ``extra-openai-models.yaml`` under a temporary
``LLM_USER_PATH``; llm logs each prompt (with its usage) to ``logs.db`` there.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.conformance.conftest import Stack, expected_cost, llm_cli
from tests.fake_openai import REASONING, REPLY, tokenize

WEATHER = "def get_weather(city: str) -> str:\n    'The current weather in a city.'\n    return f'18C in {city}'\n"


@pytest.fixture(scope="module")
def llm_home(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("llm-user")
    entries = [f"- model_id: ww-{name}\n  model_name: {name}\n  api_base: {stack.v1}\n"
               f"  supports_tools: true\n  supports_schema: true\n" for name in ("fake", "thinker")]
    (home / "extra-openai-models.yaml").write_text("".join(entries) + "  reasoning: true\n")
    return home


def llm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLM_USER_PATH": str(home), "LLM_LOAD_PLUGINS": ""}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run([str(llm_cli()), *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def last_log(home: Path) -> dict[str, Any]:
    """llm's own record of its last prompt, read from its logs.db (cheaper than another ``llm logs`` run)."""
    with sqlite3.connect(home / "logs.db") as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM turns ORDER BY rowid DESC LIMIT 1").fetchone()
    assert row is not None, "llm logged nothing"
    return dict(row)


def test_plain_and_streamed_agree_and_are_metered(stack: Stack, llm_home: Path, marker: str) -> None:
    plain = llm(llm_home, "-m", "ww-fake", "--no-stream", "-o", "max_tokens", "50", f"{marker} Say something.")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == REPLY
    sent = stack.log.chat(marker)
    assert sent["model"] == "gpt-4o-fake" and sent["max_tokens"] == 50 and not sent.get("stream")
    logged = last_log(llm_home)
    details = json.loads(logged["token_details"])
    usage = {"prompt_tokens": logged["input_tokens"], "completion_tokens": logged["output_tokens"],
             "prompt_tokens_details": details["prompt_tokens_details"]}
    assert details["prompt_tokens_details"]["cached_tokens"] == logged["input_tokens"] // 2
    row = stack.trace(marker)
    assert (row.input_tokens, row.cached_input_tokens, row.output_tokens) == (
        logged["input_tokens"], details["prompt_tokens_details"]["cached_tokens"], logged["output_tokens"])
    assert row.cost_usd == pytest.approx(expected_cost("fake", usage))
    assert json.loads(logged["response_json"])["wattwise"]["cost_usd"] == pytest.approx(row.cost_usd)

    streamed = llm(llm_home, "-m", "ww-fake", f"{marker} streamed")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == plain.stdout
    assert stack.log.chat(marker + " streamed")["stream"] is True
    assert last_log(llm_home)["output_tokens"] == len(tokenize(REPLY))


@pytest.mark.parametrize("flags", [["--no-stream"], []], ids=["plain", "streamed"])
def test_tool_round_trip(stack: Stack, llm_home: Path, marker: str, flags: list[str]) -> None:
    done = llm(llm_home, "-m", "ww-fake", *flags, "--functions", WEATHER, f"{marker} Weather in Paris?")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "The tool said: 18C in Paris"
    [first, second] = stack.log.find(marker)
    assert first.body["tools"][0]["function"]["name"] == "get_weather"
    call = second.body["messages"][-2]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert second.body["messages"][-1] == {"role": "tool", "tool_call_id": call["id"], "content": "18C in Paris"}


def test_structured_output(stack: Stack, llm_home: Path, marker: str) -> None:
    done = llm(llm_home, "-m", "ww-fake", "--schema", "name, population int", f"{marker} A city.")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"name": "Paris", "population": 42}
    assert stack.log.chat(marker)["response_format"]["type"] == "json_schema"


def test_reasoning_tokens_logged_and_priced(stack: Stack, llm_home: Path, marker: str) -> None:
    done = llm(llm_home, "-m", "ww-thinker", "--no-stream", f"{marker} Think.")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == REPLY
    details = json.loads(last_log(llm_home)["token_details"])
    assert details["completion_tokens_details"]["reasoning_tokens"] == len(tokenize(REASONING))
    assert stack.trace(marker).reasoning_tokens == len(tokenize(REASONING))


def test_upstream_rate_limit_surfaces(llm_home: Path, marker: str) -> None:
    # One error case only (each llm run costs seconds); the other clients cover the 400.
    done = llm(llm_home, "-m", "ww-fake", "--no-stream", f"{marker} [[429]]")
    assert done.returncode != 0
    assert "Error code: 429" in done.stderr and "rate_limit_exceeded" in done.stderr, done.stderr
