"""The out-of-scope threshold rule ("accuracy": maximise held-out accuracy with out-of-scope as a
class) on synthetic data. It names no target figure."""
import numpy as np
import pytest

from intent_service.data import Dataset
from intent_service.model import choose_threshold
from intent_service.training import train_model

CLASSES = ["A", "B", "None"]


def synthetic():
    """100 in-scope + 20 OOS rows; each row's top in-scope confidence is set directly.

    in-scope: 90 correct at 0.80, 4 correct at 0.35, 6 wrong (A predicted for B) at 0.25
    OOS:      10 at 0.20, 5 at 0.30, 5 at 0.60
    """
    rows, y = [], []

    def row(conf, top):  # top in-scope class gets conf, the other in-scope class a little less
        p = {"A": 0.0, "B": 0.0, "None": 0.0}
        p[top] = conf
        p["B" if top == "A" else "A"] = conf * 0.5
        p["None"] = 0.01  # never the arg-max: only the threshold makes None
        return [p[c] for c in CLASSES]

    for conf, n, top, truth in [(0.80, 90, "A", "A"), (0.35, 4, "A", "A"), (0.25, 6, "A", "B"),
                                (0.20, 10, "A", "None"), (0.30, 5, "A", "None"),
                                (0.60, 5, "A", "None")]:
        rows += [row(conf, top)] * n
        y += [truth] * n
    return np.array(rows), y


def test_accuracy_rule_maximises_accuracy_with_oos_as_a_class():
    probs, y = synthetic()
    t = choose_threshold(probs, CLASSES, y)
    # t in (0.60, 0.80]: all 20 OOS rows become None, the 4 correct rows at 0.35 are lost:
    # 90 + 20 = 110 of 120 right; t in (0.30, 0.35]: 90 + 4 + 15 = 109; t = 0: 94.
    # The smallest threshold of the best interval on the grid is 0.605.
    assert t == pytest.approx(0.605)
    # the old recall-target rule stops at the first threshold reaching the target instead
    assert choose_threshold(probs, CLASSES, y, oos_recall_target=0.50) == pytest.approx(0.205)


def test_accuracy_rule_counts_every_utterance_once():
    # with 4 OOS rows only, rejecting the 4 low-confidence correct in-scope rows to catch one
    # more OOS row does not pay: accuracy decides, not a recall figure
    probs, y = synthetic()
    keep = list(range(100)) + [100, 101, 110, 111]  # 2 OOS at 0.20, 2 at 0.30
    t = choose_threshold(probs[keep], CLASSES, [y[i] for i in keep])
    assert 0.30 < t <= 0.35


def test_degenerate_and_training_integration():
    probs, y = synthetic()
    assert choose_threshold(probs[:100], CLASSES, y[:100]) == 0.0  # no OOS rows: no threshold
    texts = ([f"track my order number {i}" for i in range(12)]
             + [f"show me red shoes size {i}" for i in range(12)]
             + [f"what is the weather on planet {i}" for i in range(12)])
    intents = ["Order"] * 12 + ["Shop"] * 12 + ["None"] * 12
    train = Dataset(texts=texts[::2], intents=intents[::2])
    val = Dataset(texts=texts[1::2], intents=intents[1::2])
    model = train_model(train, validation=val, config={"embedding_weight": 0.0})
    cal = model.meta["calibration"]
    assert cal["threshold_rule"] == "accuracy" and cal["source"] == "validation"
    assert model.threshold == pytest.approx(choose_threshold(model.probabilities(val.texts),
                                                             model.classes, val.intents))
    with pytest.raises(ValueError):
        train_model(train, validation=val, threshold_rule="target-margin")
