"""The semantic cache's guard, learned thresholds and answer comparison (wattwise.cache.semantic)."""

from __future__ import annotations

import json

import pytest

from wattwise.cache.semantic import Features, Guard, Thresholds, same_answer
from wattwise.routing.embed import Embedder


@pytest.fixture(scope="module")
def guard() -> Guard:
    return Guard(Embedder.load())


def differs(guard: Guard, a: str, b: str) -> str | None:
    return guard.differs(guard.features(a), guard.features(b))


@pytest.mark.parametrize(("a", "b", "part"), [
    ("What is 12 times 7?", "What is 12 times 8?", "numbers"),
    ("What is twelve times seven?", "What is twelve times eight?", "numbers"),
    ("Is Python a compiled language?", "Is Python not a compiled language?", "negations"),
    ("Why can I sleep at night?", "Why can't I sleep at night?", "negations"),
    ("What did Barack Obama say about taxes?", "What did Donald Trump say about taxes?", "entit"),
    ("How do I call parse_config in my script?", "How do I call load_config in my script?", "identifiers"),
    ('What does the error "file not found" mean?', 'What does the error "permission denied" mean?', "quotes"),
    ("What does `x += 1` do?", "What does `x -= 1` do?", "code"),
    ("How do I learn python quickly?", "How do I learn java quickly?", "content words"),
    ("Is Apple better than Samsung?", "Is Samsung better than Apple?", "order"),
    # Two options' texts swapped: the answer letter changes, the words and their first order do not.
    ("Water freezing is a\nA) chemical change\nB) chemical property\nC) physical change\nD) physical property",
     "Water freezing is a\nA) chemical change\nB) chemical property\nC) physical property\nD) physical change",
     "options"),
    ("Pick one: A) red B) blue", "Pick one: A) blue B) red", "options"),
    # a Winogrande twin: one quantity word flips the answer
    ("Cynthia played better than Jennifer but _ had more control. A) Cynthia B) Jennifer",
     "Cynthia played better than Jennifer but _ had less control. A) Cynthia B) Jennifer", "content words"),
    # co-hyponyms that word vectors place as close as synonyms, told apart by their spelling
    ("Write a function to find the nth decagonal number.", "Write a function to find the nth nonagonal number.",
     "content words"),
    # a long shared few-shot prefix must not supply counterparts for a different question's words
    ("Answer A or B.\nThe trophy would not fit in the suitcase because the _ was too big. A) trophy B) suitcase\n"
     "Answer: A\n\nJoe drank his milk and tried to dunk his cookie in the glass but the _ was too small.",
     "Answer A or B.\nThe trophy would not fit in the suitcase because the _ was too big. A) trophy B) suitcase\n"
     "Answer: A\n\nPlaying basketball came easier for the boy than the girl but the _ had more control.",
     "content words"),
    # ... in the question asked after a few-shot example, too
    ("Wind?\nA) west\nB) east\nAnswer: B\n\nWater freezing is a\nA) physical change\nB) chemical change\nAnswer:",
     "Wind?\nA) west\nB) east\nAnswer: B\n\nWater freezing is a\nA) chemical change\nB) physical change\nAnswer:",
     "options"),
])
def test_guard_refuses_answer_determining_differences(guard: Guard, a: str, b: str, part: str) -> None:
    reason = differs(guard, a, b)
    assert reason is not None and part in reason


@pytest.mark.parametrize(("a", "b"), [
    ("How can I improve my English?", "How could I improve my English?"),
    ("What are the best books to learn cooking?", "What are the best book to learn cooking?"),
    ("How do I lose weight fast?", "How do I lose weight quickly?"),
    ("What is 12 times 7?", "what is 12 times 7"),
    ("Pick one:\nA) red\nB) blue", "Pick one: A) red  B) blue"),
])
def test_guard_accepts_rephrasings(guard: Guard, a: str, b: str) -> None:
    assert differs(guard, a, b) is None


def test_features_round_trip_through_json(guard: Guard) -> None:
    f = guard.features('Why does `os.path.join` in "my script" fail for 3 files, Alice?')
    back = Features.from_dict(json.loads(json.dumps(f.to_dict())))
    assert back == f
    assert "3" in f.numbers and "alice" in f.entities and f.code and f.quotes


def test_klass_separates_near_copies(guard: Guard) -> None:
    a, b = guard.features("How do I learn to cook rice?"), guard.features("How do I learn to cook pasta?")
    c = guard.features("Best way to get started with cooking grains at home")
    assert guard.klass(a, b) == "near"
    assert guard.klass(a, c) == "far"
    # only function words, case and spacing differ: a class of its own
    assert guard.klass(a, guard.features("how  can I learn to cook rice")) == "same-words"
    assert guard.klass(a, guard.features("How do I learn to cook more rice?")) == "near"


def test_thresholds_never_hit_without_evidence() -> None:
    th = Thresholds(0.01, explore=0.0)
    assert {th.verdict("near", 0.999) for _ in range(50)} == {"verify"}
    assert th.threshold("near") is None


def stream(th: Thresholds, *, noisy: bool, n: int = 6000) -> None:
    """Clean: wrong candidates sit below 0.9. Noisy: one in five is wrong, whatever its similarity."""
    for i in range(n):
        sim = 0.6 + 0.4 * (i % 100) / 100
        wrong = (i // 100) % 5 == 0 if noisy else sim < 0.9
        th.observe("near", sim, not wrong)


def test_thresholds_learn_to_hit_with_clean_evidence() -> None:
    th = Thresholds(0.01, warm=100, explore=0.0)
    stream(th, noisy=False)
    t = th.threshold("near")
    assert t is not None and 0.88 <= t <= 0.91
    assert th.verdict("near", 0.97) == "hit"
    assert th.verdict("near", 0.97, refused=True) == "miss"
    assert th.verdict("near", 0.8) == "miss"


def test_thresholds_stay_shut_with_noisy_evidence() -> None:
    th = Thresholds(0.01, warm=100, explore=0.0)
    stream(th, noisy=True)
    assert th.threshold("near") is None
    assert th.verdict("near", 0.999) == "miss"


def test_thresholds_round_trip_through_json() -> None:
    th = Thresholds(0.02, warm=100, explore=0.0)
    stream(th, noisy=False)
    th.observe("near", 0.7, False, refused=True)
    back = Thresholds.from_dict(json.loads(json.dumps(th.to_dict())))
    assert back.to_dict() == th.to_dict()
    assert back.threshold("near") == th.threshold("near")


def test_verification_rate_drops_once_evidence_is_in() -> None:
    th = Thresholds(0.01, warm=100, explore=0.1)
    assert th.verify_rate("near") == 1.0
    stream(th, noisy=False, n=200)
    assert th.verify_rate("near") == 0.1


def test_same_answer(guard: Guard) -> None:
    assert same_answer("Paris.", "paris")
    assert not same_answer("The answer is 84.", "The answer is 96.")
    assert not same_answer("The answer is 84.", "The answer is 96.", guard=guard)
    assert same_answer("Boil the rice for 12 minutes, then let it rest.",
                       "Boil the rice for 12 minutes and then let it rest.", guard=guard)
    assert not same_answer("Boil the rice for 12 minutes.", "Boil the pasta for 12 minutes.", guard=guard)
    assert not same_answer("Yes, it is safe.", "No, it is not safe.", guard=guard)
