"""Answer normalisation and the learned cascade acceptor (fast, synthetic data only)."""

from __future__ import annotations

import json
import random

import pytest

from wattwise.routing.acceptor import Acceptor, Example, grouped
from wattwise.routing.answers import FEATURE_NAMES, answer_key, response_features


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("['B\\n']", "b"),
        ("A) Mars", "a"),
        ("so the answer is (C).", "c"),
        ("#### 1,200", "1200"),
        ("She sells 9 eggs at $2 each, so she makes 9 * $2 = $18 every day at the market.", "18"),
        ("The total is 18.0 dollars, which is a long way of saying it in prose form", "18"),
        ("def f(x):\n    return sorted(x, key=len)", None),
        ("Here is the code:\n```python\nprint(1)\n```\nThe answer is 3", None),
        ("A long answer in prose with no number to compare at all, only words.", None),
        ("", None),
        (None, None),
    ],
)
def test_answer_key_degrades_to_none_on_free_text(text: str | None, key: str | None) -> None:
    assert answer_key(text) == key


def test_response_features_flag_format() -> None:
    code = response_features("```python\ndef f():\n    pass\n```")
    empty = response_features("")
    letter = response_features("['A']")
    assert len(code) == len(FEATURE_NAMES)
    assert code[FEATURE_NAMES.index("code")] == 1.0 and code[FEATURE_NAMES.index("key_none")] == 1.0
    assert empty[FEATURE_NAMES.index("empty")] == 1.0
    assert letter[FEATURE_NAMES.index("key_letter")] == 1.0
    assert response_features("I'm sorry, I cannot help")[FEATURE_NAMES.index("refusal")] == 1.0


def test_groups_by_value_and_free_text_alone() -> None:
    calls = [("a", "B"), ("b", "def f(): pass"), ("c", "['B\\n']"), ("d", "A")]
    groups = grouped(calls, {"a": 0.5, "c": 0.9})
    assert sorted(map(sorted, groups)) == [[0, 2], [1], [3]]
    assert next(g for g in groups if len(g) == 2)[0] == 2  # the best-prior member represents the group


def synthetic_examples(n: int, seed: int) -> list[Example]:
    """'good' is right 90% of the time, 'noisy' 50%; when both agree the answer is right."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        truth = rng.choice("ABCD")
        good = truth if rng.random() < 0.9 else rng.choice([c for c in "ABCD" if c != truth])
        noisy = truth if rng.random() < 0.5 else rng.choice([c for c in "ABCD" if c != truth])
        calls = (("noisy", noisy), ("good", good))
        out.append(
            Example(
                calls=calls,
                prior={"noisy": 0.5, "good": 0.9},
                scores=(float(noisy == truth), float(good == truth)),
                prompt_id=str(i),
            )
        )
    return out


def test_acceptor_learns_reliability_and_agreement() -> None:
    acc = Acceptor.fit(synthetic_examples(400, 1), models=["good", "noisy"])
    prior = {"noisy": 0.5, "good": 0.9}
    split = acc.groups([("noisy", "A"), ("good", "B")], prior)
    agreed = acc.groups([("noisy", "C"), ("good", "C")], prior)
    assert split[0].members == ("good",) and split[0].key == "b"  # the reliable model wins a split
    assert agreed[0].p > split[0].p > split[1].p
    again = Acceptor.from_json(json.loads(json.dumps(acc.to_json())))
    assert again.groups([("noisy", "A"), ("good", "B")], prior)[0].p == pytest.approx(split[0].p, abs=1e-4)


def test_acceptor_handles_unknown_models_and_one_class() -> None:
    acc = Acceptor.fit(synthetic_examples(5, 2)[:1], models=["good"])
    got = acc.groups([("stranger", "A")], {})
    assert len(got) == 1 and 0.0 < got[0].p < 1.0
    assert acc.groups([], {}) == []
