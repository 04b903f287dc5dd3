"""Prompt features for the quality and length predictors: fast, JSON-serialisable scalings.

A prompt becomes one dense vector: its WordLlama embedding (two views, see ``routing/embed.py``)
followed by a few structural figures (length, lines, digits, code symbols, option lines ...), every
column standardised with the training prompts' mean and spread. Only the head and the tail of a long
prompt are embedded, so the cost of a decision stays bounded however long the prompt is; the length
figures see the whole text. (Before: TF-IDF over a learned n-gram vocabulary; ``ngrams`` stays as
the tokenisation baseline of ``bench/router_latency.py``.)

Usage::

    featurizer = Featurizer.fit(["What is 2+2?", "Write a function ..."])
    x = featurizer.transform_one("What is 3+3?")       # numpy vector, len(featurizer)
    same = Featurizer.from_json(featurizer.to_json(), embedder=featurizer.embedder)
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from wattwise.exceptions import WattwiseError
from wattwise.routing.embed import NAME as EMBEDDER_NAME
from wattwise.routing.embed import Embedder

_TOKEN = re.compile(r"\w+|[^\w\s]")
_OPTION_LINE = re.compile(r"^\s*(?:[A-Ha-h]|[1-8])[\).:]\s", re.MULTILINE)
_CODE_BYTES = b"{}()[];=<>_#"
_DIGITS = b"0123456789"
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
HEAD_CHARS = 1500
TAIL_CHARS = 2500
TFIDF_SCALE = 10.0
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
    """Maps prompts to dense vectors: the prompt embedding and the structural figures, standardised,
    then TF-IDF weights of a learned n-gram vocabulary (``max_vocab=0``: none).

    Usage::

        f = Featurizer.fit(prompts, embedder=Embedder.load())
        X = f.transform(prompts)          # (len(prompts), len(f)) float array
    """

    def __init__(
        self,
        *,
        embedder: Embedder | None,
        mean: Sequence[float] | np.ndarray,
        std: Sequence[float] | np.ndarray,
        vocab: Sequence[str] = (),
        idf: Sequence[float] = (),
    ) -> None:
        self.embedder = embedder if embedder is not None else Embedder.load()
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.vocab = list(vocab)
        self._index = {term: i for i, term in enumerate(self.vocab)}
        self.idf = np.asarray(idf, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.mean) + len(self.vocab)

    @staticmethod
    def raw(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
        """Unscaled dense features: embedding and structural figures side by side."""
        if not texts:
            return np.zeros((0, embedder.dim + len(STRUCT_NAMES)))
        emb = embedder.embed_many(texts).astype(np.float64)
        struct = np.array([structure(t) for t in texts], dtype=np.float64)
        return np.hstack([emb, struct])

    @classmethod
    def fit(
        cls, prompts: Sequence[str], *, embedder: Embedder | None = None, max_vocab: int = 0, min_df: int = 3
    ) -> Featurizer:
        """Learn each dense column's mean and spread, and the n-gram vocabulary, on training prompts."""
        emb = embedder if embedder is not None else Embedder.load()
        raw = cls.raw(emb, prompts)
        std = raw.std(axis=0) if len(raw) else np.ones(raw.shape[1])
        mean = raw.mean(axis=0) if len(raw) else np.zeros(raw.shape[1])
        vocab, idf = _vocabulary(prompts, max_vocab, min_df) if max_vocab > 0 else ([], [])
        return cls(embedder=emb, mean=mean, std=np.where(std > 1e-9, std, 1.0), vocab=vocab, idf=idf)

    def _tfidf(self, text: str) -> np.ndarray:
        get = self._index.get
        ids = [i for i in map(get, ngrams(text)) if i is not None]
        tf = np.bincount(np.asarray(ids, dtype=np.int64), minlength=len(self.vocab)).astype(np.float64)
        tfidf = np.log1p(tf) * self.idf
        norm = float(np.sqrt(tfidf @ tfidf))
        # unit length, then scaled so a typical weight is of the order of a standardised column
        return tfidf * (TFIDF_SCALE / norm) if norm > 0 else tfidf

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Feature matrix of many prompts, one row each."""
        dense = np.clip((self.raw(self.embedder, texts) - self.mean) / self.std, -6.0, 6.0)
        if not self.vocab:
            return dense
        sparse = np.vstack([self._tfidf(t) for t in texts]) if texts else np.zeros((0, len(self.vocab)))
        return np.hstack([dense, sparse])

    def transform_one(self, text: str) -> np.ndarray:
        """The feature vector of one prompt."""
        return self.transform([text])[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "embedder": EMBEDDER_NAME,
            "mean": _rounded(self.mean),
            "std": _rounded(self.std),
            "vocab": self.vocab,
            "idf": _rounded(self.idf, 5),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any], *, embedder: Embedder | None = None) -> Featurizer:
        if obj.get("embedder") != EMBEDDER_NAME:
            raise WattwiseError(f"router needs prompt embedder {obj.get('embedder')!r}; this build has {EMBEDDER_NAME}")
        return cls(
            embedder=embedder, mean=obj["mean"], std=obj["std"], vocab=obj.get("vocab", []), idf=obj.get("idf", [])
        )


def _vocabulary(prompts: Sequence[str], max_vocab: int, min_df: int) -> tuple[list[str], list[float]]:
    """The most frequent n-grams by document frequency (dropping near-universal ones) and their IDF."""
    df: Counter[str] = Counter()
    for text in prompts:
        df.update(set(ngrams(text)))
    n = max(1, len(prompts))
    kept = sorted(((t, c) for t, c in df.items() if min_df <= c <= 0.95 * n), key=lambda tc: (-tc[1], tc[0]))
    vocab = [t for t, _ in kept[:max_vocab]]
    return vocab, [math.log((1 + n) / (1 + df[t])) + 1.0 for t in vocab]


def _rounded(values: np.ndarray, digits: int = 6) -> list[float]:
    """Floats rounded for a compact JSON file (6 significant digits is far below the noise)."""
    return [float(f"{v:.{digits}g}") for v in np.asarray(values, dtype=np.float64).ravel()]
