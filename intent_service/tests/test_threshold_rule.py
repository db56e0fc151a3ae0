"""The pre-registered CLINC150 threshold rule ("target-margin") on synthetic data."""
import math

import numpy as np
import pytest

from intent_service.data import Dataset
from intent_service.model import (choose_threshold, choose_threshold_target_margin,
                                  target_margin_z)
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


def test_target_margin_rule_picks_the_best_worst_case_margin():
    probs, y = synthetic()
    t, z = choose_threshold_target_margin(probs, CLASSES, y, acc_target=0.92,
                                          oos_recall_target=0.50)
    # t in (0.30, 0.35]: OOS recall 15/20 = 0.75, in-scope accuracy 94/100 (the six wrong rows
    # are wrong either way); accuracy is the weaker target: (0.94 - 0.92) / sqrt(.92*.08/100)
    assert t == pytest.approx(0.305)
    assert z == pytest.approx((0.94 - 0.92) / math.sqrt(0.92 * 0.08 / 100))
    assert z == pytest.approx(target_margin_z(0.94, 0.75, 100, 20))
    # the old rule (smallest threshold reaching 50 % recall) stops earlier, with z = 0
    assert choose_threshold(probs, CLASSES, y, oos_recall_target=0.50) == pytest.approx(0.205)
    # above 0.35 the four correct low-confidence rows are rejected: accuracy 0.90 < target
    assert target_margin_z(0.90, 0.75, 100, 20) < 0 < z


def test_target_margin_weighs_recall_by_its_standard_error():
    # with only 4 OOS rows, one more rejected OOS row (+25 recall points) is worth less than
    # the 4 in-scope points it costs here: se_rec = 0.25, se_acc ~ 0.027
    assert target_margin_z(0.96, 0.75, 100, 4) == pytest.approx(1.0)
    assert target_margin_z(0.92, 1.00, 100, 4) == pytest.approx(0.0)


def test_target_margin_degenerate_and_training_integration():
    probs, y = synthetic()
    t, z = choose_threshold_target_margin(probs[:100], CLASSES, y[:100])
    assert t == 0.0 and math.isnan(z)  # no OOS rows: no threshold
    texts = ([f"track my order number {i}" for i in range(12)]
             + [f"show me red shoes size {i}" for i in range(12)]
             + [f"what is the weather on planet {i}" for i in range(12)])
    intents = ["Order"] * 12 + ["Shop"] * 12 + ["None"] * 12
    train = Dataset(texts=texts[::2], intents=intents[::2])
    val = Dataset(texts=texts[1::2], intents=intents[1::2])
    model = train_model(train, validation=val, threshold_rule="target-margin")
    cal = model.meta["calibration"]
    assert cal["threshold_rule"] == "target-margin" and "target_margin_z" in cal
    expect, _ = choose_threshold_target_margin(model.probabilities(val.texts), model.classes,
                                               val.intents)
    assert model.threshold == pytest.approx(expect)
    with pytest.raises(ValueError):
        train_model(train, validation=val, threshold_rule="nonsense")
