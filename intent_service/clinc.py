"""CLINC150 Full: the honest protocol and the paper's two settings.

Larson et al., "An Evaluation Dataset for Intent Classification and Out-of-Scope Prediction",
EMNLP-IJCNLP 2019 (CC BY 3.0), Table 2.

Protocol
    * Every choice is made on ``val`` + ``oos_val`` only, by rules that name no target figure:
      the configuration (``select_config``: val accuracy with out-of-scope as a class, at each
      candidate's own rule-chosen threshold, and the one-standard-error rule), the softmax temperature (val log-loss) and the out-of-scope threshold
      (``model.choose_threshold``: maximise val accuracy with out-of-scope as a class).
    * ``fit_settings`` never receives the test split: it returns the fitted models with every
      choice fixed. ``evaluate_settings`` then scores ``test`` + ``oos_test`` once.

Settings (all with the same configuration)
    * ``oos-train``: trained on train + oos_train, out-of-scope as a 151st class, no threshold.
    * ``oos-threshold``: trained on the 150 in-scope intents only, threshold on the top score.
    * ``shipped``: oos-train plus the threshold (what the service ships).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .data import Dataset
from .model import DEFAULT_CONFIG, NONE_LABEL, IntentModel, apply_threshold, normalize_config
from .training import _memo, evaluate_model, figures, train_model

#: Larson et al. 2019, Table 2, CLINC150 Full: (in-scope accuracy, OOS recall), as quoted in the
#: project's reference notes (only the rows quoted there).
PAPER_ROWS = {
    "oos-train": [("BERT", 96.9, 40.3), ("MLP (USE embeddings)", 93.5, 47.4),
                  ("DialogFlow", 91.7, 14.0), ("Rasa", 91.5, 45.3), ("SVM", 91.0, 14.5)],
    "oos-threshold": [("BERT", 96.2, 52.3)],
}

#: Configurations compared on val by ``python -m intent_service clinc150 --select``, from the
#: simplest and cheapest to train (the first is the TF-IDF-only model shipped before the encoder;
#: LogisticRegression trains about 3x slower than LinearSVC here).
CANDIDATES: List[Dict[str, Any]] = [
    {"embedding_weight": 0.0, "classifier": "svc", "C": 1.0},
    {"embedding_weight": 1.0, "classifier": "svc", "C": 1.0},
    {"embedding_weight": 2.0, "classifier": "svc", "C": 1.0},
    {"embedding_weight": 2.0, "classifier": "svc", "C": 0.5},
    {"embedding_weight": 2.0, "classifier": "svc", "C": 2.0},
    {"embedding_weight": 3.0, "classifier": "svc", "C": 1.0},
    {"embedding_weight": 2.0, "classifier": "logreg", "C": 10.0},
    {"embedding_weight": 2.0, "classifier": "logreg", "C": 30.0},
]


def in_scope_only(ds: Dataset) -> Dataset:
    keep = [i for i, y in enumerate(ds.intents) if y != NONE_LABEL]
    return Dataset(texts=[ds.texts[i] for i in keep], intents=[ds.intents[i] for i in keep],
                   files=ds.files, entity_spec=ds.entity_spec, sha256=ds.sha256)


def _with_threshold(model: IntentModel, threshold: float, setting: str) -> IntentModel:
    meta = dict(model.meta)
    meta["calibration"] = dict(meta["calibration"], threshold=threshold, setting=setting)
    return IntentModel(pipeline=model.pipeline, temperature=model.temperature,
                       threshold=threshold, entity_spec=model.entity_spec, meta=meta)


def val_score(model: IntentModel, val: Dataset) -> Dict[str, Any]:
    """The selection criterion: val accuracy with out-of-scope as a class at the model's own
    threshold, plus the val figures."""
    fig = figures(val.intents, model.predict_labels(val.texts))
    return {"criterion": fig["overall_accuracy"], "figures": fig}


def fit_settings(train: Dataset, val: Dataset, config: Optional[Dict[str, Any]] = None,
                 log: Callable[[str], None] = print) -> Dict[str, Dict[str, Any]]:
    """The three settings, every choice made on ``val`` (which holds val + oos_val).
    No test data is passed in, so none can reach a choice."""
    cfg = normalize_config(config or DEFAULT_CONFIG)
    out: Dict[str, Dict[str, Any]] = {}
    with _memo(cfg):
        t0 = time.perf_counter()
        base = train_model(train, validation=val, config=cfg, name="clinc150")
        log(f"  oos-train model fitted and calibrated on val in {time.perf_counter() - t0:.1f}s")
        out["oos-train"] = {"model": _with_threshold(base, 0.0, "oos-train")}
        out["shipped"] = {"model": _with_threshold(base, base.threshold, "shipped")}
        t0 = time.perf_counter()
        thr_model = train_model(in_scope_only(train), validation=val, config=cfg,
                                name="clinc150-oos-threshold")
        log(f"  oos-threshold model fitted and calibrated on val in {time.perf_counter() - t0:.1f}s")
        out["oos-threshold"] = {"model": _with_threshold(thr_model, thr_model.threshold,
                                                         "oos-threshold")}
        for s in out.values():
            s["val"] = figures(val.intents, s["model"].predict_labels(val.texts))
    return out


def evaluate_settings(settings: Dict[str, Dict[str, Any]], test: Dataset) -> None:
    """Score each setting on test + oos_test, once. Nothing is chosen here."""
    for s in settings.values():
        s["test"] = evaluate_model(s["model"], test)


def select_config(train: Dataset, val: Dataset, candidates: Optional[Sequence[Dict[str, Any]]] = None,
                  log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Choose the configuration on val with the one-standard-error rule: score each candidate by
    its val accuracy with out-of-scope as a class (at its own val-chosen temperature and
    threshold); take the best score ``b``; choose the FIRST candidate (the list runs from the
    simplest and cheapest to train) whose score is at least ``b - sqrt(b (1 - b) / n_val)``, i.e.
    within one binomial standard error of the best. Only ``train`` and ``val`` are used."""
    rows = []
    with _memo({"embedding_weight": 1.0}):  # one encoding of train + val for every candidate
        for cand in candidates or CANDIDATES:
            rows.append(_score_candidate(train, val, normalize_config(cand), log))
    best = max(r["criterion"] for r in rows)
    se = float(np.sqrt(best * (1 - best) / max(len(val), 1)))
    chosen = next(r for r in rows if r["criterion"] >= best - se - 1e-12)
    log(f"  best val accuracy {100 * best:.2f} %, one standard error {100 * se:.2f} points: "
        f"the first candidate from {100 * (best - se):.2f} % is chosen")
    return {"rows": rows, "best": best, "standard_error": se, "chosen": chosen["config"]}


def _score_candidate(train: Dataset, val: Dataset, cfg: Dict[str, Any],
                     log: Callable[[str], None]) -> Dict[str, Any]:
    t0 = time.perf_counter()
    m = train_model(train, validation=val, config=cfg, name="select")
    sc = val_score(m, val)
    lab0 = apply_threshold(m.probabilities(val.texts), m.classes, 0.0)
    f = sc["figures"]
    y = np.asarray(val.intents, dtype=object)
    oos = y == NONE_LABEL
    row = {"config": cfg, "criterion": sc["criterion"], "threshold": m.threshold,
           "temperature": m.temperature, "in_scope_accuracy": f["in_scope_accuracy"],
           "oos_recall": f["oos_recall"],
           "in_scope_accuracy_no_threshold": float((lab0[~oos] == y[~oos]).mean()),
           "seconds": time.perf_counter() - t0}
    log(f"  {_cfg_name(cfg):28s} val accuracy (OOS as a class) {100 * row['criterion']:.2f} %"
        f" at threshold {row['threshold']:.3f}: in-scope {100 * row['in_scope_accuracy']:.2f} %,"
        f" OOS recall {100 * row['oos_recall']:.1f} %; no threshold: in-scope "
        f"{100 * row['in_scope_accuracy_no_threshold']:.2f} % ({row['seconds']:.0f}s)")
    return row


def _cfg_name(cfg: Dict[str, Any]) -> str:
    emb = f"+ {cfg['embedding_weight']:g} x MiniLM" if cfg["embedding_weight"] else "TF-IDF only"
    return f"{emb}, {cfg['classifier']} C={cfg['C']:g}"
