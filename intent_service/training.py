"""Training, calibration, cross-validation and evaluation.

Stable entry points (used by the CLI and by other modules of the service):

* ``train_model(dataset, *, validation=None, config=None, C=None, threshold=None, ...) -> IntentModel``
* ``cross_validate(dataset, folds=5, ...)``: out-of-fold figures where every fold's model is
  trained, calibrated and thresholded without seeing that fold.
* ``evaluate_model(model, dataset)``, ``figures(y_true, y_pred)``, ``format_figures(fig)``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import platform
from collections import Counter
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import regex  # type: ignore[import-untyped]

from .data import Dataset
from .model import (NONE_LABEL, IntentModel, apply_threshold, build_pipeline, choose_threshold,
                    embedding_steps, fit_temperature, normalize_config, softmax)

#: "accuracy": maximise held-out accuracy with out-of-scope as a class (default; names no target).
#: "recall-target": the old rule (smallest threshold reaching ``oos_recall_target``).
THRESHOLD_RULES = ("accuracy", "recall-target")

log = logging.getLogger("intent_service")
_HANGUL = regex.compile(r"\p{Hangul}")


def language_of(text: str) -> str:
    """"ko" when the text has Hangul, else "en" (the retail data's two languages)."""
    return "ko" if _HANGUL.search(text) else "en"


def _library_versions() -> Dict[str, str]:
    import sklearn

    out = {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
           "numpy": np.__version__}
    try:
        import onnxruntime
        import tokenizers

        out.update({"onnxruntime": onnxruntime.__version__, "tokenizers": tokenizers.__version__})
    except ImportError:  # a TF-IDF-only configuration needs neither
        pass
    return out


def _decision(pipeline: Any, texts: List[str]) -> np.ndarray:
    s = pipeline.decision_function(texts)
    return np.stack([-s, s], axis=1) if s.ndim == 1 else s


@contextlib.contextmanager
def _memo(config: Dict[str, Any]) -> Iterator[None]:
    """Encode each distinct text once while folds and final fits reuse it."""
    if config["embedding_weight"] > 0:
        from .features import SentenceEmbedding

        with SentenceEmbedding().encoder().memoized():
            yield
    else:
        yield


def _held_out_scores(dataset: Dataset, config: Dict[str, Any], folds: int, seed: int) -> np.ndarray:
    """Out-of-fold decision scores on the training data (stratified k-fold)."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(dataset.intents, dtype=object)
    classes = sorted(set(dataset.intents))
    min_count = min(Counter(dataset.intents).values())
    k = max(2, min(folds, min_count))
    scores = np.zeros((len(y), len(classes)))
    texts = np.asarray(dataset.texts, dtype=object)
    for tr, te in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(texts, y):
        p = build_pipeline(config=config).fit(list(texts[tr]), list(y[tr]))
        s = _decision(p, list(texts[te]))
        cols = [classes.index(c) for c in p.classes_]
        full = np.full((len(te), len(classes)), s.min() - 1.0)
        full[:, cols] = s
        scores[te] = full
    return scores


def calibrate(scores: np.ndarray, classes: Sequence[str], y: Sequence[str],
              threshold_rule: str = "accuracy", oos_recall_target: float = 0.9) -> Tuple[float, float]:
    """(temperature, threshold) from held-out decision scores: the temperature minimises the
    held-out log-loss of the known classes, the threshold follows ``threshold_rule``."""
    classes = list(classes)
    rows = np.array([i for i, c in enumerate(y) if c in classes], dtype=int)
    idx = np.array([classes.index(y[i]) for i in rows], dtype=int)
    temperature = fit_temperature(scores[rows], idx) if len(rows) else 5.0
    probs = softmax(scores, temperature)
    if threshold_rule == "recall-target":
        thr = choose_threshold(probs, classes, y, oos_recall_target=oos_recall_target)
    else:
        thr = choose_threshold(probs, classes, y)
    return temperature, thr


def train_model(dataset: Dataset, *, validation: Optional[Dataset] = None,
                config: Optional[Dict[str, Any]] = None, C: Optional[float] = None,
                threshold: Optional[float] = None, threshold_rule: str = "accuracy",
                oos_recall_target: float = 0.9, cv_folds: int = 5,
                version: Optional[str] = None, name: str = "model", seed: int = 0) -> IntentModel:
    """Fit the classifier on ``dataset`` and calibrate it on held-out data.

    ``config``: ``model.DEFAULT_CONFIG`` keys (``embedding_weight``, ``classifier``, ``C``);
    ``C`` overrides ``config["C"]``. The softmax temperature and the out-of-scope threshold come
    from ``validation`` when given, otherwise from k-fold out-of-fold scores on the training
    data; the threshold by ``threshold_rule`` (default "accuracy": maximise held-out accuracy with
    out-of-scope as a class; see ``model.choose_threshold``). ``threshold`` fixes it instead.
    """
    if threshold_rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold_rule must be one of {THRESHOLD_RULES}")
    if len(set(dataset.intents)) < 2:
        raise ValueError("training data needs at least two intents")
    cfg = normalize_config(config, C=C)
    trained_at = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    with _memo(cfg):
        pipeline = build_pipeline(config=cfg).fit(dataset.texts, dataset.intents)
        classes = [str(c) for c in pipeline.classes_]
        if validation is not None:
            keep = [i for i, y in enumerate(validation.intents) if y in classes or y == NONE_LABEL]
            cal_y = [validation.intents[i] for i in keep]
            cal_scores = _decision(pipeline, [validation.texts[i] for i in keep])
            cal_source = "validation"
        else:
            cal_y = list(dataset.intents)
            cal_scores = _held_out_scores(dataset, cfg, cv_folds, seed)
            cal_source = f"{cv_folds}-fold cross-validation"
    temperature, tuned = calibrate(cal_scores, classes, cal_y, threshold_rule, oos_recall_target)
    thr = float(threshold) if threshold is not None else tuned
    probs = softmax(cal_scores, temperature)
    cal_fig = figures(cal_y, list(apply_threshold(probs, classes, thr)))

    steps = embedding_steps(pipeline)
    encoder = steps[0].encoder().info() if steps else None
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
        "config": {**cfg, "features": "word 1-2 + char_wb 1-5 tf-idf"
                   + (" + all-MiniLM-L6-v2 sentence embedding" if steps else "")},
        "encoder": encoder,
        "calibration": {"source": cal_source, "temperature": temperature,
                        "tuned_threshold": tuned, "threshold": thr,
                        "threshold_rule": threshold_rule,
                        **({"oos_recall_target": oos_recall_target}
                           if threshold_rule == "recall-target" else {})},
        "evaluation": {"held_out": {k: cal_fig[k] for k in ("in_scope_accuracy", "oos_recall",
                                                             "n_in_scope", "n_oos")}},
    }
    return IntentModel(pipeline=pipeline, temperature=temperature, threshold=thr,
                       entity_spec=dataset.entity_spec, meta=meta)


def cross_validate(dataset: Dataset, folds: int = 5, seed: int = 0, **train_kwargs: Any) -> Dict[str, Any]:
    """Out-of-fold predictions: each fold is predicted by a model trained (and calibrated, by
    its own inner cross-validation) on the other folds only. Returns ``figures`` of all
    predictions plus ``by_language`` (en/ko) figures."""
    from sklearn.model_selection import StratifiedKFold

    cfg = normalize_config(train_kwargs.pop("config", None), C=train_kwargs.pop("C", None))
    texts = np.asarray(dataset.texts, dtype=object)
    y = np.asarray(dataset.intents, dtype=object)
    k = max(2, min(folds, min(Counter(dataset.intents).values())))
    pred = np.empty(len(y), dtype=object)
    thresholds = []
    with _memo(cfg):
        for tr, te in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(texts, y):
            part = Dataset(texts=list(texts[tr]), intents=list(y[tr]),
                           entity_spec=dataset.entity_spec, sha256=dataset.sha256)
            m = train_model(part, config=cfg, seed=seed, **train_kwargs)
            pred[te] = m.predict_labels(list(texts[te]))
            thresholds.append(m.threshold)
    fig = figures(list(y), list(pred))
    langs = np.array([language_of(t) for t in texts])
    fig["by_language"] = {str(lang): figures(list(y[langs == lang]), list(pred[langs == lang]))
                          for lang in sorted(set(langs))}
    fig["folds"] = k
    fig["fold_thresholds"] = [float(t) for t in thresholds]
    return fig


def figures(y_true: List[str], y_pred: List[str]) -> Dict[str, Any]:
    """In-scope accuracy, out-of-scope recall/precision, per-intent P/R/F1, confusion counts."""
    yt = np.asarray(y_true, dtype=object)
    yp = np.asarray(y_pred, dtype=object)
    oos = yt == NONE_LABEL
    n_in, n_oos = int((~oos).sum()), int(oos.sum())
    in_acc = float((yp[~oos] == yt[~oos]).mean()) if n_in else float("nan")
    oos_rec = float((yp[oos] == NONE_LABEL).mean()) if n_oos else float("nan")
    pred_none = yp == NONE_LABEL
    oos_prec = float((yt[pred_none] == NONE_LABEL).mean()) if pred_none.any() else float("nan")
    confusions = Counter((t, p) for t, p in zip(yt, yp, strict=True) if t != p)
    per_intent = {}
    for c in sorted(set(yt) | set(yp)):
        tp = int(((yt == c) & (yp == c)).sum())
        support, predicted = int((yt == c).sum()), int((yp == c).sum())
        p = tp / predicted if predicted else float("nan")
        r = tp / support if support else float("nan")
        f1 = 2 * p * r / (p + r) if predicted and support and (p + r) else 0.0
        per_intent[str(c)] = {"precision": p, "recall": r, "f1": f1, "support": support}
    f1s = [v["f1"] for v in per_intent.values() if v["support"]]
    return {"n": len(yt), "n_in_scope": n_in, "n_oos": n_oos,
            "in_scope_accuracy": in_acc, "oos_recall": oos_rec, "oos_precision": oos_prec,
            "overall_accuracy": float((yp == yt).mean()) if len(yt) else float("nan"),
            "macro_f1": float(np.mean(f1s)) if f1s else float("nan"),
            "in_scope_to_none": int(((~oos) & pred_none).sum()),
            "per_intent": per_intent, "confusions": confusions}


def evaluate_model(model: IntentModel, dataset: Dataset) -> Dict[str, Any]:
    return figures(dataset.intents, model.predict_labels(dataset.texts))


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.2f}%"


def format_figures(fig: Dict[str, Any], top: int = 15, per_intent: bool = True) -> str:
    lines = [
        f"examples: {fig['n']} ({fig['n_in_scope']} in-scope, {fig['n_oos']} out-of-scope)",
        f"in-scope accuracy: {_pct(fig['in_scope_accuracy'])}",
        f"out-of-scope recall: {_pct(fig['oos_recall'])}",
        f"out-of-scope precision: {_pct(fig['oos_precision'])}",
        f"overall accuracy (None as a class): {_pct(fig['overall_accuracy'])}",
        f"macro-F1 (None as a class): {_pct(fig['macro_f1'])}",
        f"in-scope utterances rejected as None: {fig['in_scope_to_none']}",
    ]
    if per_intent and fig.get("per_intent"):
        width = max(len("intent"), *(len(c) for c in fig["per_intent"]))
        lines.append(f"per intent:  {'intent':<{width}}  precision  recall     F1  support")
        for c, v in fig["per_intent"].items():
            def f(x):
                return "   n/a" if x != x else f"{100 * x:6.1f}"
            lines.append(f"             {c:<{width}}     {f(v['precision'])}  {f(v['recall'])}"
                         f" {f(v['f1'])}  {v['support']:7d}")
    lines.append(f"confusion summary (true -> predicted, top {top} of "
                 f"{sum(fig['confusions'].values())} errors):")
    for (t, p), n in fig["confusions"].most_common(top):
        lines.append(f"  {n:4d}  {t} -> {p}")
    return "\n".join(lines)


def figures_json(fig: Dict[str, Any]) -> Dict[str, Any]:
    """``figures`` as JSON-ready data (confusions as a list)."""
    out = {k: v for k, v in fig.items() if k not in ("confusions", "by_language")}
    out["confusions"] = [{"true": t, "predicted": p, "count": n}
                         for (t, p), n in fig["confusions"].most_common()]
    if "by_language" in fig:
        out["by_language"] = {k: figures_json(v) for k, v in fig["by_language"].items()}
    return out
