"""The official openai Node SDK, unmodified, through wattwise to the faithful fake OpenAI.

One ``node`` process runs every case (tests/conformance/node/cases.mjs) and prints the results; each
test below checks one case, and what reached the upstream.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

import pytest
from tests.conformance.conftest import NODE_DIR, WEATHER_TOOL, Stack, expected_cost, need_client, node_problem
from tests.fake_openai import FINGERPRINT, REASONING, REPLY, tokenize

CASES = ["plain", "stream", "tools", "tools_stream", "structured", "logprobs", "error400", "error429", "reasoning"]


def run_node(base: str, marker: str, cases: list[str], **extra: Any) -> dict[str, Any]:
    need_client("openai Node SDK", node_problem())
    args = json.dumps({"base": base, "marker": marker, "cases": cases, **extra})
    done = subprocess.run(["node", str(NODE_DIR / "cases.mjs"), args], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, f"node failed ({done.returncode}): {done.stderr[-2000:]}"
    results: dict[str, Any] = json.loads(done.stdout)
    return results


@pytest.fixture(scope="module")
def node(stack: Stack) -> tuple[str, dict[str, Any]]:
    marker = "nd" + uuid.uuid4().hex[:10]
    return marker, run_node(stack.v1, marker, CASES)


def result(node: tuple[str, dict[str, Any]], case: str) -> dict[str, Any]:
    found: dict[str, Any] = node[1][case]
    if case.startswith("error"):
        return found
    assert "error" not in found, f"{case} raised in node: {found.get('error')}"
    return found


def test_plain(stack: Stack, node: tuple[str, dict[str, Any]]) -> None:
    marker, _ = node
    got = result(node, "plain")
    reply = got["reply"]
    assert reply["choices"][0]["message"]["content"] == REPLY
    assert reply["system_fingerprint"] == FINGERPRINT and reply["service_tier"] == "default"
    usage = reply["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] // 2
    assert float(got["cost"]) == pytest.approx(expected_cost("fake", usage))
    sent = stack.log.chat(f"{marker}-plain")
    assert sent["model"] == "gpt-4o-fake" and sent["user"] == f"user-{marker}"
    row = stack.trace(f"{marker}-plain")
    assert row.id == got["request_id"] and row.cost_usd == pytest.approx(expected_cost("fake", usage))


def test_stream_matches_plain(stack: Stack, node: tuple[str, dict[str, Any]]) -> None:
    marker, _ = node
    got = result(node, "stream")
    assert got["content"] == result(node, "plain")["reply"]["choices"][0]["message"]["content"] == REPLY
    assert len(got["ids"]) == 1 and got["fingerprints"] == [FINGERPRINT] and got["finish"] == ["stop"]
    assert got["usage"]["completion_tokens"] == len(tokenize(REPLY))
    row = stack.trace(f"{marker}-stream")
    assert row.stream and row.response == REPLY
    assert row.cost_usd == pytest.approx(expected_cost("fake", got["usage"]))


def test_tool_round_trip(stack: Stack, node: tuple[str, dict[str, Any]]) -> None:
    marker, _ = node
    got = result(node, "tools")
    first = got["first"]
    assert first["finish_reason"] == "tool_calls" and first["message"]["content"] is None
    [call] = first["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert got["final"] == "The tool said: 18C and sunny"
    assert stack.log.chat(f"{marker}-tools")["tools"] == [WEATHER_TOOL]
    assert stack.log.chat("18C and sunny")["messages"][-1]["tool_call_id"] == call["id"]


def test_tool_round_trip_streamed(node: tuple[str, dict[str, Any]]) -> None:
    got = result(node, "tools_stream")
    pieces = got["first"]["tool_pieces"]
    assert len(pieces) > 2 and pieces[0]["id"] and pieces[0]["type"] == "function"
    assert pieces[0]["function"]["name"] == "get_weather"
    assert json.loads(got["call"]["arguments"]) == {"city": "Paris"}
    assert got["first"]["finish"] == ["tool_calls"]
    assert got["final"] == "The tool said: rainy, 9C"


def test_structured_output(stack: Stack, node: tuple[str, dict[str, Any]]) -> None:
    marker, _ = node
    assert result(node, "structured")["parsed"] == {"name": "Paris", "population": 42}
    assert stack.log.chat(f"{marker}-structured")["response_format"]["json_schema"]["strict"] is True


def test_logprobs(node: tuple[str, dict[str, Any]]) -> None:
    got = result(node, "logprobs")
    assert "".join(t["token"] for t in got["content"]) == REPLY
    assert all(len(t["top_logprobs"]) == 2 for t in got["content"])
    assert got["streamed"] == got["content"]


def test_upstream_400_is_bad_request(node: tuple[str, dict[str, Any]]) -> None:
    err = result(node, "error400")["error"]
    assert err["bad_request"] and err["status"] == 400, err
    assert err["body"]["param"] == "messages"


def test_upstream_429_is_rate_limit(node: tuple[str, dict[str, Any]]) -> None:
    err = result(node, "error429")["error"]
    assert err["rate_limit"] and err["status"] == 429, err
    assert err["headers"]["retry-after"] == "1" and err["headers"]["x-ratelimit-remaining-requests"] == "0"


def test_reasoning_usage_cost_and_max_completion_tokens(stack: Stack, node: tuple[str, dict[str, Any]]) -> None:
    marker, _ = node
    got = result(node, "reasoning")
    sent = stack.log.chat(f"{marker}-reasoning")
    assert sent["max_completion_tokens"] == 64 and "max_tokens" not in sent
    assert got["usage"]["completion_tokens_details"]["reasoning_tokens"] == len(tokenize(REASONING))
    assert float(got["cost"]) == pytest.approx(expected_cost("thinker", got["usage"]))
    assert got["streamed"]["reasoning"] == REASONING and got["streamed"]["content"] == REPLY
