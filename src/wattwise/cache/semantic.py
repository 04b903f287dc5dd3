"""The semantic cache's brain: a guard against wrong hits and thresholds learned from verified evidence.

A semantic hit serves the answer of an earlier, similar request. Similar is not the same: "what is
12*7" and "what is 12*8" embed almost identically. So a candidate (the nearest cached entry, found by
cosine similarity of ``Embedder.vector``) is served only when

1. the **guard** finds no answer-determining difference between the two texts: numbers (digits and
   number words), named entities (capitalised or all-caps words, which must appear in the other text),
   identifiers (snake_case, camelCase, dotted names, paths, URLs, e-mails, versions), negations,
   quoted strings, code spans and blocks, and content words: each content word (non-stopword) of one
   text needs a counterpart in the other whose WordLlama token vector is within cosine ``theta``
   ("python" and "java" are far apart, "book" and "books" close); and
2. the similarity clears the **threshold** of the request's class, learned online from verifications
   (vCache's idea): a sampled candidate is *verified*, i.e. the request goes upstream anyway and
   ``same_answer(cached, fresh)`` says whether the hit would have been right. ``Thresholds`` keeps per
   class counts of verified candidates and wrong ones in similarity bins, and opens the lowest
   threshold at which the Wilson upper bound of the false-hit rate (the share of wrong candidates
   that would be served) is at most ``max_error``. With no evidence it never answers "hit"; every
   candidate is verified while evidence is thin, a small share after.

Features are plain JSON (``to_dict``/``from_dict``) so entries can live in Redis; so do thresholds
(a few integer counts per class).

Usage::

    guard = Guard(Embedder.load())
    fa, fb = guard.features(cached_prompt), guard.features(new_prompt)
    reason = guard.differs(fa, fb)             # None, or e.g. "numbers differ: 8 vs 7"
    th = Thresholds(max_error=0.01)
    klass = guard.klass(fa, fb)
    verdict = th.verdict(klass, similarity, refused=reason is not None)
    ...                                        # on "verify": fetch fresh, serve it, then
    th.observe(klass, similarity, same_answer(cached_answer, fresh_answer), refused=reason is not None)
"""

from __future__ import annotations

import difflib
import functools
import math
import random
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from wattwise.routing.embed import Embedder

Verdict = Literal["hit", "miss", "verify"]

NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40,
    "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "million": 10**6, "billion": 10**9, "trillion": 10**12, "first": 1, "second": 2, "third": 3,
    "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10, "twice": 2,
    "half": 0.5, "dozen": 12,
}
NEGATIONS = frozenset({"not", "no", "never", "without", "cannot", "none", "nobody", "nothing", "neither", "nor",
                       "nowhere", "n't"})
_STOPWORDS = """
a an the and or but if then else of to in on at by for with from into onto over under about above below
as than so such that this these those there here it its it's itself i me my mine myself we us our ours you
your yours he him his she her hers they them their theirs is are was were be been being am do does did
doing done have has had having can could will would shall should may might must get gets got getting
what which who whom whose when where why how whether some any each every all both few more most other
another much many very really just also too only even still ever again please let lets make makes made
one's someone something anyone anything thing things way ways someone's
"""
STOPWORDS = frozenset(_STOPWORDS.split())
# Function words that decide an answer when one replaces another ("more" / "less", "before" / "after").
MAX_SEQUENCE = 2000  # words of a text's tail kept in order for the diff (the question sits at the end)
POLAR = frozenset({"more", "most", "less", "least", "fewer", "few", "many", "much", "all", "some", "any", "each",
                   "every", "both", "only", "above", "below", "over", "under", "before", "after"})

PERSONS = {"i": "1s", "me": "1s", "my": "1s", "mine": "1s", "myself": "1s", "i'm": "1s", "i've": "1s",
           "we": "1p", "us": "1p", "our": "1p", "ours": "1p", "ourselves": "1p",
           "you": "2", "your": "2", "yours": "2", "yourself": "2", "yourselves": "2", "you're": "2"}
QUESTION_WORDS = frozenset({"what", "how", "why", "where", "when", "which", "who", "whom", "whose"})

_WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)?")
_NUMBER = re.compile(r"(?<![A-Za-z_])[-+]?\d+(?:[.,:/]\d+)*(?:st|nd|rd|th|k|m|%)?(?![A-Za-z_])|\d+")
_URL = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")
_PATH = re.compile(r"(?:~|\.{1,2})?(?:/[\w.\-]+){2,}/?|\b[A-Za-z]:\\[\w\\.\- ]+")
_VERSION = re.compile(r"\bv?\d+\.\d+(?:\.\d+)+\b|\bv\d+(?:\.\d+)*\b")
_IDENT = re.compile(r"\b(?:[A-Za-z_]\w*_\w+|[a-z]+[A-Z]\w*|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\(?\)?|\w+\(\))")
_CODE_BLOCK = re.compile(r"```.*?(?:```|$)", re.S)
_CODE_SPAN = re.compile(r"`[^`\n]+`")
_QUOTED = re.compile(r"\"([^\"\n]{1,200})\"|“([^”\n]{1,200})”|(?:(?<=\s)|^)['‘]([^'’\n]{1,200})['’](?=[\s.,;:?!)]|$)")
_SENTENCE_END = re.compile(r"[.!?:\n]\s*$")
# An answer option's label: "A)", "(B)", "C." or "D:" after a line start or a space, before its text.
_OPTION = re.compile(r"(?:^|(?<=\s))\(?([A-H])[).:](?=\s)", re.M)


def _options(text: str) -> tuple[str, ...]:
    """Every run of labelled answer options (A, B, … in order) as "<run>.<label>=<text>".

    Swapping two options' texts changes the answer and hardly moves the embedding or the word sets, so
    the guard compares each label's text; few-shot prompts list several runs, the last one asked.
    """
    marks = list(_OPTION.finditer(text))
    runs: list[list[str]] = []
    expected = "A"
    for i, mark in enumerate(marks):
        label = mark.group(1)
        if label == "A":
            runs.append([])
        elif label != expected or not runs:
            expected = "A"
            continue
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = _norm_space(text[mark.end():end].split("\n")[0]).lower().rstrip(" .;,")
        runs[-1].append(f"{len(runs)}.{label.lower()}={body}")
        expected = chr(ord(label) + 1)
    return tuple(option for run in runs if len(run) >= 2 for option in run)


def _norm_space(text: str) -> str:
    return " ".join(text.split())


def _number(token: str) -> str:
    """A canonical spelling of a number token: '1,000' -> '1000', '3.50' -> '3.5', '5th' -> '5'."""
    core = token.lower().rstrip("%").removesuffix("st").removesuffix("nd").removesuffix("rd").removesuffix("th")
    core = core.replace(",", "") if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", core) else core
    try:
        value = float(core)
    except ValueError:
        return core
    return f"{value:g}" + ("%" if token.endswith("%") else "")


def _stem(word: str) -> str:
    word = word.lower().replace("’", "'").removesuffix("'s")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@dataclass(frozen=True)
class Features:
    """The answer-determining parts of one text (all lower-cased, sorted where order does not matter)."""

    numbers: tuple[str, ...] = ()
    entities: tuple[str, ...] = ()
    identifiers: tuple[str, ...] = ()
    quotes: tuple[str, ...] = ()
    code: tuple[str, ...] = ()
    negations: int = 0
    person: tuple[str, ...] = ()
    question: tuple[str, ...] = ()
    words: tuple[str, ...] = field(default=())
    vocabulary: tuple[str, ...] = ()
    options: tuple[str, ...] = ()  # labelled answer options in order, "a=<text>" (multiple-choice prompts)
    sequence: tuple[str, ...] = ()  # every content word's stem in order (the diff of two texts is taken on it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Features:
        fields: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        fields["sequence"] = tuple(sys.intern(w) for w in fields.get("sequence", ()))
        return cls(**fields)


ALL_CHECKS = ("options", "code", "quotes", "identifiers", "numbers", "negations", "entities", "person", "question",
              "order", "words")


class Guard:
    """Extracts ``Features`` and refuses a candidate hit whose answer-determining parts differ.

    ``theta`` is the cosine two content words' WordLlama vectors need to count as counterparts;
    ``checks`` names the checks to run (all by default; the evaluation switches them off one by one).
    """

    def __init__(self, embedder: Embedder, *, theta: float = 0.4, checks: tuple[str, ...] = ALL_CHECKS,
                 memo_words: int = 50_000) -> None:
        unknown = set(checks) - set(ALL_CHECKS)
        if unknown:
            raise ValueError(f"unknown guard checks: {sorted(unknown)}")
        self.embedder = embedder
        self.theta = theta
        self.checks = tuple(checks)
        self._memo_words = memo_words
        self._vectors: dict[str, np.ndarray] = {}

    def features(self, text: str) -> Features:
        """The text's features; about 0.1 ms for a question, linear in its length."""
        options = _options(text)
        code = [_norm_space(m.group(0).strip("`")) for m in _CODE_BLOCK.finditer(text)]
        prose = _CODE_BLOCK.sub(" ", text)
        code += [_norm_space(m.group(0).strip("`")) for m in _CODE_SPAN.finditer(prose)]
        prose = _CODE_SPAN.sub(" ", prose)
        quotes = [_norm_space(next(g for g in m.groups() if g is not None)).lower() for m in _QUOTED.finditer(prose)]
        idents: list[str] = []
        for pattern in (_URL, _EMAIL, _PATH, _VERSION, _IDENT):
            idents += [m.group(0).rstrip(".,;:?!)").lower() for m in pattern.finditer(prose)]
            prose = pattern.sub(" ", prose)
        numbers = [_number(m.group(0)) for m in _NUMBER.finditer(prose)]
        negations, entities, person, question, words, vocabulary = 0, set(), set(), set(), [], set()
        sequence: list[str] = []
        seen: set[str] = set()
        for m in _WORD.finditer(prose):
            raw = m.group(0)
            low = raw.lower().replace("’", "'")
            vocabulary.add(low)
            if low.endswith("n't") or low in NEGATIONS:
                negations += 1
                continue
            if low in PERSONS:
                person.add(PERSONS[low])
            if low in QUESTION_WORDS:
                question.add(low)
            if low in NUMBER_WORDS:
                numbers.append(f"{NUMBER_WORDS[low]:g}")
                continue
            if low in STOPWORDS or (low.endswith("'s") and low[:-2] in STOPWORDS):
                sequence.append(sys.intern(low))  # aligns the diff; checked only if a quantity/comparison word
                continue
            stem = sys.intern(_stem(low))  # interned: long prompts' sequences share their strings
            sequence.append(stem)
            if stem not in seen:
                seen.add(stem)
                words.append(stem)
            if (raw[0].isupper() and not _sentence_start(prose, m.start())) or (len(raw) > 1 and raw.isupper()):
                entities.add(stem)
        return Features(numbers=tuple(sorted(numbers)), entities=tuple(sorted(entities)),
                        identifiers=tuple(sorted(set(idents))), quotes=tuple(sorted(set(quotes))),
                        code=tuple(sorted(set(code))), negations=negations, person=tuple(sorted(person)),
                        question=tuple(sorted(question)), words=tuple(words), vocabulary=tuple(sorted(vocabulary)),
                        options=options, sequence=tuple(sequence[-MAX_SEQUENCE:]))

    def differs(self, a: Features, b: Features) -> str | None:
        """None when no answer-determining part differs, else a short reason."""
        for check in self.checks:
            reason = self._check(check, a, b)
            if reason is not None:
                return reason
        return None

    def klass(self, a: Features, b: Features) -> str:
        """The threshold class of a candidate: "same-words" when no word that can change an answer
        differs (only function words, case, spacing, punctuation), else "near" when the two texts share
        at least half of their words, else "far".

        Wrong candidates that pass the guard are mostly near-copies with one small change (a
        Winogrande twin: "more" for "less"), so "near" candidates get a threshold of their own, apart
        from rewordings that change no content word, and the false-hit bound holds in each.
        """
        if a.sequence and b.sequence and _checked_words(a) == _checked_words(b):
            return "same-words"
        left, right = set(a.vocabulary), set(b.vocabulary)
        shared = len(left & right) / max(1, len(left), len(right))
        return "near" if shared >= 0.5 else "far"

    def unmatched(self, a: Features, b: Features) -> tuple[str, str] | None:
        """A content word of one text with no counterpart in the other, else None.

        The texts are diffed word by word (their content-word stems in order): a word only one side has
        needs a counterpart among the other side's *changed* words (or, when the other side changed
        none, anywhere in it) within cosine ``theta``, and must not be an orthographic sibling of it
        ("decagonal" / "nonagonal", "Austria" / "Australia": co-hyponyms that static word vectors
        place as close as synonyms). Diffing keeps a long shared prefix (few-shot examples, a system
        text) from supplying a counterpart for every word of a different question.
        """
        for x, y in _changed(a, b):
            missing = [w for w in x if w not in set(y)]
            if not missing:
                continue
            if not y:
                return missing[0], ""
            best = self._matrix(missing) @ self._matrix(list(y)).T
            for i, word in enumerate(missing):
                j = int(np.argmax(best[i]))
                if float(best[i, j]) < self.theta or _siblings(word, y[j]):
                    return word, y[j]
        return None

    def _check(self, check: str, a: Features, b: Features) -> str | None:
        if check == "negations":
            return None if a.negations == b.negations else f"negations differ: {a.negations} vs {b.negations}"
        if check == "entities":
            for x, y in ((a, b), (b, a)):
                missing = sorted(set(x.entities) - set(y.words))
                if missing:
                    return f"entity only in one text: {missing[0]}"
            return None
        if check == "order":
            left = [w for w in a.words if w in set(b.words)]
            right = [w for w in b.words if w in set(a.words)]
            return None if left == right else f"word order differs: {' '.join(left)[:40]} vs {' '.join(right)[:40]}"
        if check == "words":
            pair = self.unmatched(a, b)
            return None if pair is None else f"content words differ: {pair[0]} vs {pair[1] or '-'}"
        left, right = getattr(a, check), getattr(b, check)
        if left == right:
            return None
        return f"{check} differ: {_show(left)} vs {_show(right)}"

    def _matrix(self, words: list[str]) -> np.ndarray:
        return np.vstack([self._vector(w) for w in words])

    def _vector(self, word: str) -> np.ndarray:
        vec = self._vectors.get(word)
        if vec is None:
            if len(self._vectors) >= self._memo_words:
                self._vectors.clear()
            vec = self.embedder.vector(word)
            self._vectors[word] = vec
        return vec


@functools.lru_cache(maxsize=64)  # the guard's word check and the class both ask for the same pair
def _changed(a: Features, b: Features) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """The words each side has that the other lacks, and where to look for their counterparts.

    With word sequences: the diff's changed words of ``a`` against those of ``b`` (all of ``b``'s words
    when only ``a`` changed), and the other way round; without (features from before sequences were
    kept): every word against every word.
    """
    if not a.sequence or not b.sequence:
        return [(a.words, b.words), (b.words, a.words)]
    left: list[str] = []
    right: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a.sequence, b.sequence, autojunk=False).get_opcodes():
        if tag != "equal":
            left += [w for w in a.sequence[i1:i2] if _checked(w)]
            right += [w for w in b.sequence[j1:j2] if _checked(w)]
    # Sequences keep a long text's last MAX_SEQUENCE words: a content word only one whole text has
    # (the word sets cover all of it) counts as changed even where the kept tails agree.
    left += [w for w in a.words if w not in set(b.words) and w not in left]
    right += [w for w in b.words if w not in set(a.words) and w not in right]
    if not left and not right:
        return []
    return [(tuple(left), tuple(right) or b.words), (tuple(right), tuple(left) or a.words)]


def _checked_words(features: Features) -> tuple[str, ...]:
    """The words that can change an answer, in order (two texts equal in these differ only in function
    words, case, spacing and punctuation)."""
    return tuple(w for w in features.sequence if _checked(w))


def _checked(word: str) -> bool:
    """Whether a changed word can change the answer: a content word, or a quantity/comparison word."""
    return word in POLAR or (word not in STOPWORDS and not (word.endswith("'s") and word[:-2] in STOPWORDS))


def _siblings(x: str, y: str) -> bool:
    """Two different words spelled alike but not one inflecting the other: "decagonal"/"nonagonal"."""
    if x == y or x.startswith(y) or y.startswith(x) or min(len(x), len(y)) < 4:
        return False
    return difflib.SequenceMatcher(None, x, y, autojunk=False).ratio() >= 0.6


def _sentence_start(text: str, pos: int) -> bool:
    before = text[:pos].rstrip(" \t\"'“‘(")
    return not before or _SENTENCE_END.search(before + " ") is not None


def _show(values: tuple[str, ...]) -> str:
    return ", ".join(values)[:60] or "-"


def wilson_upper(errors: float, n: float, z: float = 1.645) -> float:
    """The Wilson score upper bound of a binomial rate (one-sided 95% for z = 1.645)."""
    if n <= 0:
        return 1.0
    p = errors / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


class Thresholds:
    """Per-class similarity thresholds learned online from verified candidates.

    ``max_error`` bounds the **false-hit rate**: the share of wrong candidates (lookups whose nearest
    entry's answer would not do) that are served. A sampled share of *all* candidates at or above
    ``floor`` is verified, including those the guard refused (they go upstream anyway, so a
    verification costs one answer comparison). Per class the state is, for guard-passing candidates in
    ``bins`` equal similarity bins over ``[floor, 1]``, the number verified and the number wrong, plus
    the same two numbers for refused candidates. The classes' thresholds are chosen together under one
    budget of wrong candidates (see :meth:`_learn_all`); until the evidence supports one, nothing is served.

    Every candidate is sampled at the same rate, hit or not, refused or not, so the counts stay
    comparable: the rate is 1 until the class has ``warm`` verified candidates and ``explore`` after.
    ``verdict`` answers "verify" for sampled candidates, else "hit" for guard-passing ones at or above
    the threshold, else "miss".
    """

    def __init__(self, max_error: float = 0.01, *, floor: float = 0.5, bins: int = 50, warm: int = 2000,
                 explore: float = 0.05, z: float = 1.645, seed: int = 0, min_class: int = 100) -> None:
        if not 0 < max_error < 1:
            raise ValueError("max_error must be in (0, 1)")
        self.max_error, self.floor, self.bins, self.warm, self.explore, self.z = (
            max_error, floor, bins, warm, explore, z)
        self.min_class = min_class
        self._rng = random.Random(seed)
        self._counts: dict[str, dict[str, list[int]]] = {}
        self._learned: dict[str, float | None] | None = None

    def bin(self, similarity: float) -> int:
        return min(self.bins - 1, max(0, int((similarity - self.floor) / (1 - self.floor) * self.bins)))

    def threshold(self, klass: str) -> float | None:
        """The class's current threshold, or None while the evidence does not support any."""
        if self._learned is None:
            self._learned = self._learn_all()
        return self._learned.get(klass)

    def verify_rate(self, klass: str) -> float:
        """The share of the class's candidates verified now: all while evidence is thin."""
        c = self._counts.get(klass)
        n = sum(c["n"]) + c["refused"][0] if c else 0
        return 1.0 if n < self.warm else self.explore

    def verdict(self, klass: str, similarity: float, *, refused: bool = False) -> Verdict:
        """What to do with a candidate; ``refused`` when the guard found a difference."""
        if similarity < self.floor:
            return "miss"
        if self._rng.random() < self.verify_rate(klass):
            return "verify"
        t = self.threshold(klass)
        return "hit" if not refused and t is not None and similarity >= t else "miss"

    def observe(self, klass: str, similarity: float, same: bool, *, refused: bool = False) -> None:
        """Record one verified candidate: was the cached answer as good as the fresh one?"""
        if similarity < self.floor:
            return
        c = self._counts.setdefault(klass, {"n": [0] * self.bins, "wrong": [0] * self.bins, "refused": [0, 0]})
        if refused:
            c["refused"][0] += 1
            c["refused"][1] += 0 if same else 1
        else:
            b = self.bin(similarity)
            c["n"][b] += 1
            c["wrong"][b] += 0 if same else 1
        self._learned = None

    def _learn_all(self) -> dict[str, float | None]:
        """Every class's threshold, chosen together under one bound on the overall false-hit rate.

        ``W``, the most wrong candidates the served region may hold, is the largest count whose Wilson
        upper bound over all wrong candidates (every class, refused ones included) is within
        ``max_error``. Each class's cut is the bin edge maximising right-minus-``λ``-times-wrong
        candidates at or above it, with ``λ`` the smallest price keeping the classes' wrong candidates
        together within ``W`` (a Lagrangian split of one error budget, so a class with few wrong
        candidates of its own is not shut for lack of them). A class opens only once it has
        ``min_class`` verified candidates.
        """
        counts = self._counts
        total = sum(sum(c["wrong"]) + c["refused"][1] for c in counts.values())
        budget = -1
        while wilson_upper(budget + 1, total, self.z) <= self.max_error:
            budget += 1
        out: dict[str, float | None] = {klass: None for klass in counts}
        if budget < 0:
            return out
        curves = {}
        for klass, c in counts.items():
            if sum(c["n"]) < self.min_class:
                continue
            right = np.cumsum([n - w for n, w in zip(c["n"][::-1], c["wrong"][::-1], strict=True)])[::-1]
            wrong = np.cumsum(c["wrong"][::-1])[::-1]
            curves[klass] = (np.append(right, 0.0), np.append(wrong, 0.0))  # cut at bin i; index bins: shut

        def cuts(price: float) -> dict[str, int]:
            chosen = {}
            for klass, (right, wrong) in curves.items():
                value = right - price * wrong
                chosen[klass] = int(np.flatnonzero(value == value.max())[0])  # the lowest edge among ties
            return chosen

        def spent(chosen: dict[str, int]) -> float:
            return float(sum(curves[k][1][i] for k, i in chosen.items()))

        low, high = 0.0, 1.0
        while spent(cuts(high)) > budget and high < 1e12:
            high *= 2.0
        for _ in range(60):
            middle = (low + high) / 2.0
            low, high = (middle, high) if spent(cuts(middle)) > budget else (low, middle)
        for klass, i in cuts(high).items():
            if i < self.bins:
                out[klass] = self.floor + i * (1 - self.floor) / self.bins
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"max_error": self.max_error, "floor": self.floor, "bins": self.bins, "warm": self.warm,
                "explore": self.explore, "z": self.z, "min_class": self.min_class, "counts": self._counts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Thresholds:
        th = cls(data["max_error"], floor=data["floor"], bins=data["bins"], warm=data["warm"],
                 explore=data["explore"], z=data["z"], min_class=data.get("min_class", 100))
        th._counts = {k: {name: list(v) for name, v in c.items()} for k, c in data.get("counts", {}).items()}
        return th


def same_answer(cached: str, fresh: str, *, guard: Guard | None = None, min_cosine: float = 0.95) -> bool:
    """Whether a verification found the cached answer as good as the fresh one.

    Equal after normalising case, whitespace and trailing punctuation; or, given a guard, no
    answer-determining difference between the two answers and their embeddings within ``min_cosine``.
    """
    if _normal(cached) == _normal(fresh):
        return True
    if guard is None:
        return False
    fa, fb = guard.features(cached), guard.features(fresh)
    if guard.differs(fa, fb) is not None:
        return False
    va, vb = guard.embedder.vector(cached), guard.embedder.vector(fresh)
    return float(va @ vb) >= min_cosine


def _normal(text: str) -> str:
    return _norm_space(text).lower().rstrip(".!?;: ")
