"""Linear scores of one feature block without scikit-learn's per-call input validation.

A prediction is ``intercept + sum over blocks of features_b(text) @ W_b`` (``model.py``,
``IntentModel.decision_scores``). For a single short text, ``TfidfVectorizer.transform`` spends
most of its time validating its input and building a sparse matrix (about 0.9 ms of a 3-5 ms
request on the benchmark machine) for a row of a few dozen non-zeros. ``block_scorer`` returns a
function computing the same row's dot product directly from the vectorizer's own fitted state
(``build_analyzer()``, ``vocabulary_``, ``idf_``), or ``None`` when the vectorizer uses an option
this shortcut does not reproduce, in which case the caller keeps ``transform``.

Equivalence with scikit-learn (``TfidfVectorizer`` 1.x: term counts, ``1 + log(tf)`` when
``sublinear_tf``, times ``idf_``, then L2 normalisation of the row) is checked by
``intent_service/tests/test_fastscore.py`` against ``pipeline.decision_function`` on the
retail data and on generated text.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Optional, Sequence

import numpy as np

Scorer = Callable[[Sequence[str]], np.ndarray]


def _tfidf_scorer(vec: Any, W: np.ndarray) -> Optional[Scorer]:
    """``texts -> float64 [len(texts), classes]`` for a fitted ``TfidfVectorizer`` whose options
    are the ones reproduced here (word/char/char_wb analyzers, no ``binary``, idf on, ``l2``)."""
    if (getattr(vec, "binary", True) or not getattr(vec, "use_idf", False)
            or getattr(vec, "norm", None) != "l2" or not hasattr(vec, "idf_")
            or vec.dtype not in (np.float64, float)):
        return None
    analyze = vec.build_analyzer()
    vocab = vec.vocabulary_
    idf = np.asarray(vec.idf_, dtype=np.float64)
    sublinear = bool(vec.sublinear_tf)
    classes = W.shape[1]

    def score(texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), classes), dtype=np.float64)
        for row, text in enumerate(texts):
            counts = Counter(t for t in analyze(text) if t in vocab)
            if not counts:
                continue
            idx = np.fromiter((vocab[t] for t in counts), dtype=np.intp, count=len(counts))
            tf = np.fromiter(((1.0 + math.log(c)) if sublinear else float(c)
                              for c in counts.values()), dtype=np.float64, count=len(counts))
            vals = tf * idf[idx]
            norm = math.sqrt(float(vals @ vals))
            if norm > 0:
                out[row] = (vals / norm) @ W[idx]
        return out

    return score


def block_scorer(transformer: Any, W: np.ndarray) -> Optional[Scorer]:
    """A scorer for one FeatureUnion block with coefficient slice ``W`` ([features, classes]),
    or ``None`` (use ``transformer.transform(texts) @ W``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from .features import SentenceEmbedding

    if type(transformer) is TfidfVectorizer:
        return _tfidf_scorer(transformer, W)
    if type(transformer) is SentenceEmbedding:
        return transformer.dense_scorer(W)
    return None
