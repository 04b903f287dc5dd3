"""Answers compared by value, and the format figures of a response: inputs of the cascade acceptor.

``answer_key`` turns a response into a comparable final answer (a choice letter, a number, a short
phrase) or ``None`` when it is free text (code, prose) that cannot be compared. Nothing here knows a
model, a task or a benchmark: on long prose the key is the last number of the text's tail, and where
no key can be found agreement is simply uninformative.

Usage::

    answer_key("['B\\n']"), answer_key("so the answer is 42."), answer_key("def f(): ...")
    # -> ("b", "42", None)
    response_features("Here is the code:\\n```python\\ndef f(): pass\\n```")
"""

from __future__ import annotations

import math
import re

_WRAP = re.compile(r"^\s*\[\s*['\"](.*)['\"]\s*\]\s*$", re.DOTALL)
_NON_ALNUM = re.compile(r"[^a-z0-9.\-]+")
_MARKED = re.compile(r"(?:####|answer is|answer:)\s*\$?\s*\(?([-\w.,/]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_CODE = re.compile(r"```|\bdef \w+\(|\[PYTHON\]|^\s*(?:import|from) \w+", re.MULTILINE)
_REFUSAL = re.compile(r"\b(?:sorry|cannot|can't|unable to|as an ai|i do not|i don't)\b", re.IGNORECASE)
SHORT_ANSWER = 16  # characters: longer free text is compared only by a marked answer or its last number
TAIL = 200  # characters of a long answer searched for its final number

FEATURE_NAMES = (
    "log_chars",
    "log_lines",
    "empty",
    "code",
    "refusal",
    "key_letter",
    "key_short",
    "key_number",
    "key_none",
)


def clean(text: str | None) -> str:
    """The response text with literal ``\\n`` decoded and a one-element list wrapper removed."""
    if not text:
        return ""
    t = text.replace("\\n", "\n").strip()
    wrapped = _WRAP.match(t)
    return wrapped.group(1).strip() if wrapped else t


def answer_key(text: str | None) -> str | None:
    """A comparable form of an answer (a choice letter, a number, a short phrase), or None when
    the answer is free text that cannot be compared by value."""
    t = clean(text)
    if not t or _CODE.search(t):
        return None
    marked = _MARKED.findall(t)
    if marked:
        return _number_or_word(marked[-1])
    short = _NON_ALNUM.sub(" ", t.lower()).strip()
    if short and len(short) <= SHORT_ANSWER:
        letter = re.fullmatch(r"([a-z])(?: .*)?", short)
        return letter.group(1) if letter else short
    numbers = _NUMBER.findall(t[-TAIL:])
    return _number_or_word(numbers[-1]) if numbers else None


def _number_or_word(raw: str) -> str:
    word = raw.strip(".,$").replace(",", "").replace("$", "").lower()
    try:
        value = float(word)
    except ValueError:
        return word
    return f"{value:g}"


def agree(a: str | None, b: str | None) -> bool | None:
    """True/False when both answers compare by value, None when they do not."""
    ka, kb = answer_key(a), answer_key(b)
    if ka is None or kb is None:
        return None
    return ka == kb


def response_features(text: str | None, key: str | None = None) -> list[float]:
    """Format figures of one response, in the order of ``FEATURE_NAMES`` (``key``: its answer_key,
    passed when already computed)."""
    t = clean(text)
    k = answer_key(text) if key is None else key
    numeric = k is not None and _NUMBER.fullmatch(k) is not None
    return [
        math.log1p(len(t)) / 8.0,
        math.log1p(t.count("\n")) / 4.0,
        0.0 if t else 1.0,
        1.0 if _CODE.search(t) else 0.0,
        1.0 if _REFUSAL.search(t[:300]) else 0.0,
        1.0 if k is not None and len(k) == 1 and k.isalpha() else 0.0,
        1.0 if k is not None and not numeric and len(k) > 1 else 0.0,
        1.0 if numeric else 0.0,
        1.0 if k is None else 0.0,
    ]
