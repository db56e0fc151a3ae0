"""Sentence-embedding features for the scikit-learn pipeline.

``SentenceEmbedding`` is a stateless transformer: texts -> ``weight`` x the 384-d all-MiniLM-L6-v2
embedding (``encoder.py``). It holds only its weight and the SHA-256 of the encoder files it was
trained with; the encoder itself (an onnxruntime session) is never written into a model file, it is
looked up (and verified against those digests) in the process-wide encoder cache.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence

import numpy as np
import regex  # type: ignore[import-untyped]
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin

if TYPE_CHECKING:
    from .encoder import Encoder


_LETTER = regex.compile(r"\p{L}")
_HANGUL = regex.compile(r"\p{Hangul}")


def mostly_hangul(text: str) -> bool:
    """True when more than half of the text's letters are Hangul."""
    letters = len(_LETTER.findall(text))
    return letters > 0 and 2 * len(_HANGUL.findall(text)) > letters


class SentenceEmbedding(TransformerMixin, BaseEstimator):
    """``skip_hangul``: the encoder is English-only (an uncased English WordPiece vocabulary turns
    Hangul into jamo pieces), so a mostly-Hangul text gets the zero vector and is classified by
    its character n-grams alone, as before the encoder was added."""

    def __init__(self, weight: float = 1.0, encoder_files: Optional[Dict[str, str]] = None,
                 skip_hangul: bool = True):
        self.weight = weight
        self.encoder_files = encoder_files
        self.skip_hangul = skip_hangul

    def encoder(self) -> Encoder:
        """The verified encoder; ``EncoderIntegrityError`` if a file's digest differs."""
        from .encoder import ENCODER_FILES, get_encoder

        return get_encoder(self.encoder_files or ENCODER_FILES)

    def fit(self, X: Sequence[str], y: Any = None) -> SentenceEmbedding:
        self.encoder()  # verify now, not on the first prediction
        return self

    def embed(self, X: Sequence[str]) -> np.ndarray:
        """float64 [len(X), 384]: ``weight`` x the embedding (zeros for a mostly-Hangul text)."""
        X = [str(x) for x in X]
        emb = np.zeros((len(X), 384), dtype=np.float32)
        keep = [i for i, x in enumerate(X) if not (self.skip_hangul and mostly_hangul(x))]
        if keep:
            emb[keep] = self.encoder().encode([X[i] for i in keep])
        return emb.astype(np.float64) * float(self.weight)

    def transform(self, X: Sequence[str]) -> sp.csr_matrix:
        # sparse, so that FeatureUnion stacks it with the TF-IDF blocks without densifying them
        return sp.csr_matrix(self.embed(X))

    def dense_scorer(self, W: np.ndarray) -> Callable[[Sequence[str]], np.ndarray]:
        """``texts -> embed(texts) @ W`` (``W``: [384, classes]); the prediction fast path
        (``fastscore.block_scorer``), without the sparse round trip of ``transform``."""
        return lambda texts: self.embed(texts) @ W
