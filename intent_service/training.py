"""Training and evaluation."""
from __future__ import annotations

import datetime as _dt
import logging
import platform
from collections import Counter
from typing import Any, Dict, List, Optional

import numpy as np

from .data import Dataset
from .model import (NONE_LABEL, IntentModel, apply_threshold, build_pipeline, choose_threshold,
                    choose_threshold_target_margin, fit_temperature, softmax)

THRESHOLD_RULES = ("recall-target", "target-margin")

log = logging.getLogger("intent_service")


def _library_versions() -> Dict[str, str]:
    import sklearn

    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
            "numpy": np.__version__}


def _decision(pipeline, texts: List[str]) -> np.ndarray:
    s = pipeline.decision_function(texts)
    return np.stack([-s, s], axis=1) if s.ndim == 1 else s


def _held_out_scores(dataset: Dataset, C: float, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold decision scores on the training data (stratified k-fold)."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(dataset.intents, dtype=object)
    classes = sorted(set(dataset.intents))
    min_count = min(Counter(dataset.intents).values())
    k = max(2, min(folds, min_count))
    scores = np.zeros((len(y), len(classes)))
    texts = np.asarray(dataset.texts, dtype=object)
    for tr, te in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(texts, y):
        p = build_pipeline(C=C).fit(list(texts[tr]), list(y[tr]))
        s = _decision(p, list(texts[te]))
        cols = [classes.index(c) for c in p.classes_]
        full = np.full((len(te), len(classes)), s.min() - 1.0)
        full[:, cols] = s
        scores[te] = full
    return scores


def train_model(dataset: Dataset, *, validation: Optional[Dataset] = None, C: float = 1.0,
                threshold: Optional[float] = None, oos_recall_target: float = 0.55,
                cv_folds: int = 5, version: Optional[str] = None, name: str = "model",
                seed: int = 0, threshold_rule: str = "recall-target",
                acc_target: float = 0.92) -> IntentModel:
    """Fit the classifier on ``dataset`` and calibrate it on held-out data.

    The softmax temperature and the out-of-scope threshold come from
    ``validation`` when given, otherwise from k-fold out-of-fold scores on the
    training data. ``threshold`` overrides the tuned threshold.

    ``threshold_rule``: ``"recall-target"`` (default; the retail model) takes the
    smallest threshold reaching ``oos_recall_target`` (see ``choose_threshold``);
    ``"target-margin"`` (the pre-registered CLINC150 rule) maximises the number of
    held-out standard errors by which the weaker of in-scope accuracy >= ``acc_target``
    and OOS recall >= ``oos_recall_target`` is cleared (see
    ``choose_threshold_target_margin``).
    """
    if threshold_rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold_rule must be one of {THRESHOLD_RULES}")
    if len(set(dataset.intents)) < 2:
        raise ValueError("training data needs at least two intents")
    trained_at = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    pipeline = build_pipeline(C=C).fit(dataset.texts, dataset.intents)
    classes = [str(c) for c in pipeline.classes_]

    if validation is not None:
        keep = [i for i, y in enumerate(validation.intents) if y in classes or y == NONE_LABEL]
        cal_y = [validation.intents[i] for i in keep]
        cal_scores = _decision(pipeline, [validation.texts[i] for i in keep])
        cal_source = "validation"
    else:
        cal_y = list(dataset.intents)
        cal_scores = _held_out_scores(dataset, C, cv_folds, seed)
        cal_source = f"{cv_folds}-fold cross-validation"

    fit_idx = np.array([classes.index(y) for y in cal_y if y in classes])
    fit_rows = np.array([i for i, y in enumerate(cal_y) if y in classes])
    temperature = fit_temperature(cal_scores[fit_rows], fit_idx) if len(fit_rows) else 5.0
    probs = softmax(cal_scores, temperature)
    margin_z = None
    if threshold_rule == "target-margin":
        tuned, margin_z = choose_threshold_target_margin(
            probs, classes, cal_y, acc_target=acc_target, oos_recall_target=oos_recall_target)
    else:
        tuned = choose_threshold(probs, classes, cal_y, oos_recall_target=oos_recall_target)
    thr = float(threshold) if threshold is not None else tuned
    cal_fig = figures(cal_y, list(apply_threshold(probs, classes, thr)))

    version = version or f"{name}-{trained_at.strftime('%Y%m%dT%H%M%SZ')}-{dataset.sha256[:8]}"
    meta = {
        "version": version,
        "trained_at": trained_at.isoformat().replace("+00:00", "Z"),
        "data_sha256": dataset.sha256,
        "data_files": [f.name for f in dataset.files],
        "training_examples": len(dataset),
        "intents": sorted(set(classes) | {NONE_LABEL}),
        "entity_categories": sorted(e["category"] for e in dataset.entity_spec.get("entities", [])),
        "library_versions": _library_versions(),
        "calibration": {"source": cal_source, "temperature": temperature,
                        "tuned_threshold": tuned, "threshold": thr,
                        "threshold_rule": threshold_rule,
                        "oos_recall_target": oos_recall_target,
                        **({"acc_target": acc_target, "target_margin_z": margin_z}
                           if threshold_rule == "target-margin" else {})},
        "evaluation": {"held_out": {k: cal_fig[k] for k in ("in_scope_accuracy", "oos_recall",
                                                             "n_in_scope", "n_oos")}},
        "hyperparameters": {"C": C, "features": "word 1-2 + char_wb 1-5 tf-idf",
                            "classifier": "LinearSVC"},
    }
    return IntentModel(pipeline=pipeline, temperature=temperature, threshold=thr,
                       entity_spec=dataset.entity_spec, meta=meta)


def figures(y_true: List[str], y_pred: List[str]) -> Dict[str, Any]:
    """In-scope accuracy, out-of-scope recall/precision, confusion counts."""
    yt = np.asarray(y_true, dtype=object)
    yp = np.asarray(y_pred, dtype=object)
    oos = yt == NONE_LABEL
    n_in, n_oos = int((~oos).sum()), int(oos.sum())
    in_acc = float((yp[~oos] == yt[~oos]).mean()) if n_in else float("nan")
    oos_rec = float((yp[oos] == NONE_LABEL).mean()) if n_oos else float("nan")
    pred_none = yp == NONE_LABEL
    oos_prec = float((yt[pred_none] == NONE_LABEL).mean()) if pred_none.any() else float("nan")
    confusions = Counter((t, p) for t, p in zip(yt, yp) if t != p)
    return {"n": len(yt), "n_in_scope": n_in, "n_oos": n_oos,
            "in_scope_accuracy": in_acc, "oos_recall": oos_rec, "oos_precision": oos_prec,
            "overall_accuracy": float((yp == yt).mean()) if len(yt) else float("nan"),
            "in_scope_to_none": int(((~oos) & pred_none).sum()),
            "confusions": confusions}


def evaluate_model(model: IntentModel, dataset: Dataset) -> Dict[str, Any]:
    return figures(dataset.intents, model.predict_labels(dataset.texts))


def format_figures(fig: Dict[str, Any], top: int = 15) -> str:
    def pct(x):
        return "n/a" if x != x else f"{100 * x:.2f}%"

    lines = [
        f"examples: {fig['n']} ({fig['n_in_scope']} in-scope, {fig['n_oos']} out-of-scope)",
        f"in-scope accuracy: {pct(fig['in_scope_accuracy'])}",
        f"out-of-scope recall: {pct(fig['oos_recall'])}",
        f"out-of-scope precision: {pct(fig['oos_precision'])}",
        f"overall accuracy (None as a class): {pct(fig['overall_accuracy'])}",
        f"in-scope utterances rejected as None: {fig['in_scope_to_none']}",
        f"confusion summary (true -> predicted, top {top} of {sum(fig['confusions'].values())} errors):",
    ]
    for (t, p), n in fig["confusions"].most_common(top):
        lines.append(f"  {n:4d}  {t} -> {p}")
    return "\n".join(lines)
