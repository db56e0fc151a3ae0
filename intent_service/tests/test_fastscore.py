"""The prediction fast path (``fastscore.py``) gives scikit-learn's scores.

``IntentModel.decision_scores`` sums per-block scores computed from the vectorizers' fitted state;
``pipeline.decision_function`` is the reference (FeatureUnion + LinearSVC, with all of
scikit-learn's validation)."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intent_service.data import load_dataset
from intent_service.fastscore import block_scorer

from .conftest import RETAIL_DATA


def _reference(model, texts):
    ref = model.pipeline.decision_function(list(texts))
    return ref if ref.ndim == 2 else np.stack([-ref, ref], axis=1)


def test_every_block_of_the_shipped_configuration_has_a_fast_scorer(retail_model):
    feats = retail_model.pipeline.named_steps["features"]
    assert [name for name, _ in feats.transformer_list][:2] == ["word", "char"]
    for _, t in feats.transformer_list:
        width = len(t.vocabulary_) if hasattr(t, "vocabulary_") else 384
        assert block_scorer(t, np.zeros((width, 2))) is not None, type(t).__name__


def test_fast_scores_equal_scikit_learns_on_the_retail_utterances(retail_model):
    texts = list(load_dataset(RETAIL_DATA).texts)[:300]
    texts += ["", "   ", "!!!", "12345", "a" * 3000, "주문 배송 where is it 🙂"]
    got = retail_model.decision_scores(texts)
    np.testing.assert_allclose(got, _reference(retail_model, texts), rtol=0, atol=1e-9)


_TEXT = st.text(alphabet=st.sampled_from(list("abcdefgh xyz ORDER return 배송주문환불 12,.?!\t\n")),
                max_size=80)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_TEXT)
def test_fast_scores_equal_scikit_learns_on_generated_text(retail_model, text):
    np.testing.assert_allclose(retail_model.decision_scores([text]), _reference(retail_model, [text]),
                               rtol=0, atol=1e-9)


def test_an_unsupported_vectorizer_option_falls_back_to_transform():
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(binary=True).fit(["ab bc", "bc cd"])
    assert block_scorer(vec, np.zeros((len(vec.vocabulary_), 2))) is None
    vec = TfidfVectorizer(norm="l1").fit(["ab bc", "bc cd"])
    assert block_scorer(vec, np.zeros((len(vec.vocabulary_), 2))) is None
