"""Prompt features for the quality and length predictors: fast, dependency-light, JSON-serialisable.

A prompt becomes one dense vector: TF-IDF weights of a learned vocabulary of word unigrams and
bigrams (chosen by document frequency on the training prompts), followed by a few standardised
structural figures (length, lines, digits, code symbols, option lines ...). Only the head and the tail
of a long prompt feed the n-grams, so the cost of a decision stays bounded however long the prompt
is; the length figures see the whole text.

Usage::

    featurizer = Featurizer.fit(["What is 2+2?", "Write a function ..."], max_vocab=4096)
    x = featurizer.transform_one("What is 3+3?")       # numpy vector, len(featurizer)
    same = Featurizer.from_json(featurizer.to_json())
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")
_OPTION_LINE = re.compile(r"^\s*(?:[A-Ha-h]|[1-8])[\).:]\s", re.MULTILINE)
_CODE_BYTES = b"{}()[];=<>_#"
_DIGITS = b"0123456789"
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
HEAD_CHARS = 1500
TAIL_CHARS = 2500
STRUCT_NAMES = (
    "log_chars",
    "log_words",
    "log_lines",
    "digit_share",
    "upper_share",
    "code_share",
    "non_ascii_share",
    "question_marks",
    "option_lines",
    "log_last_line",
    "code_fence",
)


def estimate_tokens(text: str) -> int:
    """Token count estimate (4 characters a token), used where no tokenizer is at hand."""
    return max(1, math.ceil(len(text) / 4))


def ngram_text(text: str) -> str:
    """The part of a prompt the n-grams see: its head and tail, lower-cased."""
    if len(text) > HEAD_CHARS + TAIL_CHARS:
        text = text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]
    return text.lower()


def ngrams(text: str) -> list[str]:
    """Word unigrams and bigrams of the n-gram part of ``text``."""
    toks = _TOKEN.findall(ngram_text(text))
    return toks + [f"{a} {b}" for a, b in pairwise(toks)]


def structure(text: str) -> list[float]:
    """Raw structural figures of a prompt, in the order of ``STRUCT_NAMES``.

    Shares are counted on the head and tail (bytes.translate runs in C: no per-character Python).
    """
    sample = text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:] if len(text) > HEAD_CHARS + TAIL_CHARS else text
    raw = sample.encode("utf-8", "ignore")
    ascii_only = sample.encode("ascii", "ignore")
    m = max(1, len(sample))
    lines = text.count("\n") + 1
    last = text.rstrip().rsplit("\n", 1)[-1]
    return [
        math.log1p(len(text)),
        math.log1p(len(text.split())),
        math.log1p(lines),
        (len(raw) - len(raw.translate(None, _DIGITS))) / m,
        (len(ascii_only) - len(ascii_only.translate(None, _UPPER))) / m,
        (len(raw) - len(raw.translate(None, _CODE_BYTES))) / m,
        (len(sample) - len(ascii_only)) / m,
        math.log1p(text.count("?")),
        math.log1p(len(_OPTION_LINE.findall(sample))),
        math.log1p(len(last)),
        1.0 if "```" in text or "def " in sample else 0.0,
    ]


class Featurizer:
    """Maps prompts to dense feature vectors; fitted on training prompts, stored as JSON.

    Usage::

        f = Featurizer.fit(prompts, max_vocab=2048)
        X = f.transform(prompts)          # (len(prompts), len(f)) float array
    """

    def __init__(
        self,
        *,
        vocab: Sequence[str],
        idf: Sequence[float],
        struct_mean: Sequence[float] | np.ndarray,
        struct_std: Sequence[float] | np.ndarray,
    ) -> None:
        self.vocab = list(vocab)
        self._index = {term: i for i, term in enumerate(self.vocab)}
        self.idf = np.asarray(idf, dtype=np.float64)
        self.struct_mean = np.asarray(struct_mean, dtype=np.float64)
        self.struct_std = np.asarray(struct_std, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.vocab) + len(STRUCT_NAMES)

    @classmethod
    def fit(cls, prompts: Sequence[str], *, max_vocab: int = 4096, min_df: int = 3) -> Featurizer:
        """Choose the vocabulary (most frequent n-grams by document frequency) and scalings."""
        df: Counter[str] = Counter()
        for text in prompts:
            df.update(set(ngrams(text)))
        n = max(1, len(prompts))
        # Terms present in nearly every prompt carry no signal; drop them with the rare ones.
        kept = [(t, c) for t, c in df.items() if min_df <= c <= 0.95 * n]
        kept.sort(key=lambda tc: (-tc[1], tc[0]))
        vocab = [t for t, _ in kept[:max_vocab]]
        idf = [math.log((1 + n) / (1 + df[t])) + 1.0 for t in vocab]
        raw = np.array([structure(p) for p in prompts], dtype=np.float64).reshape(-1, len(STRUCT_NAMES))
        std = raw.std(axis=0) if len(raw) else np.ones(len(STRUCT_NAMES))
        return cls(
            vocab=vocab,
            idf=idf,
            struct_mean=raw.mean(axis=0) if len(raw) else std * 0,
            struct_std=np.where(std > 1e-9, std, 1.0),
        )

    def transform_one(self, text: str) -> np.ndarray:
        """The feature vector of one prompt."""
        get = self._index.get
        ids = [i for i in map(get, ngrams(text)) if i is not None]
        tf = np.bincount(np.asarray(ids, dtype=np.int64), minlength=len(self.vocab)).astype(np.float64)
        tfidf = np.log1p(tf) * self.idf
        norm = float(np.sqrt(tfidf @ tfidf))
        if norm > 0:
            tfidf /= norm
        struct = (np.asarray(structure(text)) - self.struct_mean) / self.struct_std
        return np.concatenate([tfidf, np.clip(struct, -6.0, 6.0)])

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Feature matrix of many prompts, one row each."""
        if not texts:
            return np.zeros((0, len(self)))
        return np.vstack([self.transform_one(t) for t in texts])

    def to_json(self) -> dict[str, Any]:
        return {
            "vocab": self.vocab,
            "idf": _rounded(self.idf),
            "struct_mean": _rounded(self.struct_mean),
            "struct_std": _rounded(self.struct_std),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Featurizer:
        return cls(
            vocab=obj["vocab"], idf=obj["idf"], struct_mean=obj["struct_mean"], struct_std=obj["struct_std"]
        )


def _rounded(values: np.ndarray, digits: int = 6) -> list[float]:
    """Floats rounded for a compact JSON file (6 significant digits is far below the noise)."""
    return [float(f"{v:.{digits}g}") for v in np.asarray(values, dtype=np.float64).ravel()]
