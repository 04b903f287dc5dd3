"""Dense prompt embeddings from WordLlama's static token vectors, read from its installed package.

WordLlama (``wordllama`` on PyPI, MIT) ships its weights (a 32,000 x 256 token-embedding table
distilled from large models' input embeddings) and its tokenizer inside the wheel. We read those two
files directly: nothing is downloaded, no hub is asked, no cache directory is written. A prompt's
embedding is the mean of its tokens' vectors, computed for two views of the prompt:

* ``whole``: the head and tail of the prompt (first 1,500 and last 2,500 characters), so a decision
  costs the same however long the prompt is;
* ``last``: its last 600 characters, where the question usually sits after instructions or
  few-shot examples (a few-shot prefix otherwise dominates the mean).

Each view is L2-normalised; the embedder's output is the two concatenated (512 numbers).

Usage::

    embedder = Embedder.load()          # ~0.4 s: reads 16 MB of weights
    vec = embedder.embed("What is 2+2?")
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np

from wattwise.exceptions import WattwiseError

HEAD_CHARS = 1500
TAIL_CHARS = 2500
LAST_CHARS = 600
WEIGHTS = "weights/l2_supercat_256.safetensors"
TOKENIZER = "tokenizers/l2_supercat_tokenizer_config.json"
NAME = "wordllama/l2_supercat_256"


class Embedder:
    """Mean-pooled static token embeddings of a prompt's two views.

    Usage::

        e = Embedder.load()
        X = e.embed_many(["a", "b"])        # (2, e.dim) float32
    """

    def __init__(self, *, table: np.ndarray, tokenizer: Any, memo: bool = False) -> None:
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self.tokenizer = tokenizer
        self._memo: dict[str, np.ndarray] | None = {} if memo else None

    @property
    def dim(self) -> int:
        return 2 * int(self.table.shape[1])

    @classmethod
    def load(cls, *, memo: bool = False) -> Embedder:
        """Read the weights and tokenizer from the installed ``wordllama`` package (no download).

        ``memo=True`` remembers every prompt's vector (for training and evaluation runs that see a
        prompt many times; not for the gateway, where it would grow without bound).
        """
        try:
            from safetensors import safe_open
            from tokenizers import Tokenizer

            root = resources.files("wordllama")
            tokenizer = Tokenizer.from_str(root.joinpath(TOKENIZER).read_text(encoding="utf-8"))
            with resources.as_file(root.joinpath(WEIGHTS)) as path, safe_open(str(path), framework="np") as fh:
                table = fh.get_tensor("embedding.weight")
        except (ImportError, OSError, KeyError) as exc:
            raise WattwiseError(f"cannot load the prompt embedder {NAME} from the wordllama package: {exc}") from None
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return cls(table=table, tokenizer=tokenizer, memo=memo)

    def _pool(self, text: str) -> np.ndarray:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if not ids:
            return np.zeros(self.table.shape[1], dtype=np.float32)
        vec = self.table[np.asarray(ids, dtype=np.int64)].mean(axis=0)
        norm = float(np.sqrt(vec @ vec))
        return vec / norm if norm > 0 else vec

    def vector(self, text: str) -> np.ndarray:
        """The text's single-view vector: the L2-normalised mean of its tokens' vectors (256 float32)."""
        return np.asarray(self._pool(text), dtype=np.float32)

    def embed(self, text: str) -> np.ndarray:
        """The prompt's vector: normalised means of its whole (head+tail) and last views."""
        if self._memo is not None and text in self._memo:
            return self._memo[text]
        whole = text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:] if len(text) > HEAD_CHARS + TAIL_CHARS else text
        vec = np.concatenate([self._pool(whole), self._pool(text[-LAST_CHARS:])])
        if self._memo is not None:
            self._memo[text] = vec
        return vec

    def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.vstack([self.embed(t) for t in texts])
