"""Evaluation of a trained model on test utterances, in CLU's shapes, and the promotion gate.

``evaluate(model, utterances)`` predicts every test utterance once and returns the per-utterance results
(``evaluation/result``); ``summarize(results, intents, entities)`` turns them into CLU's
``evaluation/summary-result``:

* intents: per intent, one-vs-rest counts over the test utterances (TP/FP/FN/TN), precision, recall
  and F1; the confusion matrix ``{expected: {predicted: {rawValue, normalizedValue}}}`` where
  ``normalizedValue`` is the percentage of the expected intent's utterances; micro (= accuracy for a
  single-label task) and macro averages over the intents that occur in the test set or predictions.
* entities: an entity is a true positive when category, offset and length all match a label; the
  confusion matrix pairs each label with the predicted entity that overlaps it most (``None`` when
  nothing does, and ``None`` -> category for a prediction that overlaps no label).

Values are fractions in [0, 1]; ``normalizedValue`` is a percentage, as in CLU.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from ..model import IntentModel

NONE = "None"


def predict_utterances(model: IntentModel, utterances: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per-utterance results (``evaluation/result`` items; offsets in UTF-16 code units)."""
    out = []
    for u in utterances:
        pred = model.analyze(u["text"], "Utf16CodeUnit")
        out.append({
            "text": u["text"],
            "language": u.get("language") or "",
            "intentsResult": {"expectedIntent": u["intent"], "predictedIntent": pred["topIntent"]},
            "entitiesResult": {
                "expectedEntities": [{"category": e["category"], "offset": e["offset"], "length": e["length"]}
                                     for e in u.get("entities", [])],
                "predictedEntities": [{"category": e["category"], "offset": e["offset"], "length": e["length"]}
                                      for e in pred["entities"]],
            },
        })
    return out


def _prf(tp: int, fp: int, fn: int) -> Tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def _category(tp: int, fp: int, fn: int, tn: int) -> Dict[str, Any]:
    p, r, f = _prf(tp, fp, fn)
    return {"f1": round(f, 6), "precision": round(p, 6), "recall": round(r, 6),
            "truePositiveCount": tp, "trueNegativeCount": tn,
            "falsePositiveCount": fp, "falseNegativeCount": fn}


def _averages(cats: Dict[str, Dict[str, Any]]) -> Dict[str, float]:
    # a category that is neither labelled nor predicted in the test set has no defined F1: left out
    cats = {k: c for k, c in cats.items()
            if c["truePositiveCount"] + c["falsePositiveCount"] + c["falseNegativeCount"] > 0}
    tp = sum(c["truePositiveCount"] for c in cats.values())
    fp = sum(c["falsePositiveCount"] for c in cats.values())
    fn = sum(c["falseNegativeCount"] for c in cats.values())
    mp, mr, mf = _prf(tp, fp, fn)
    n = len(cats)
    return {"microF1": round(mf, 6), "microPrecision": round(mp, 6), "microRecall": round(mr, 6),
            "macroF1": round(sum(c["f1"] for c in cats.values()) / n, 6) if n else 0.0,
            "macroPrecision": round(sum(c["precision"] for c in cats.values()) / n, 6) if n else 0.0,
            "macroRecall": round(sum(c["recall"] for c in cats.values()) / n, 6) if n else 0.0}


def _matrix(pairs: Iterable[Tuple[str, str]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    counts: Dict[str, Counter] = defaultdict(Counter)
    for exp, pred in pairs:
        counts[exp][pred] += 1
    out = {}
    for exp, row in sorted(counts.items()):
        total = sum(row.values())
        out[exp] = {pred: {"rawValue": float(n), "normalizedValue": round(100.0 * n / total, 4)}
                    for pred, n in sorted(row.items())}
    return out


def intents_summary(results: Sequence[Dict[str, Any]], intents: Sequence[str] = ()) -> Dict[str, Any]:
    pairs = [(r["intentsResult"]["expectedIntent"], r["intentsResult"]["predictedIntent"]) for r in results]
    seen = sorted({c for pair in pairs for c in pair})
    n = len(pairs)
    cats = {}
    for c in seen:
        tp = sum(1 for e, p in pairs if e == c and p == c)
        fp = sum(1 for e, p in pairs if e != c and p == c)
        fn = sum(1 for e, p in pairs if e == c and p != c)
        cats[c] = _category(tp, fp, fn, n - tp - fp - fn)
    return {"intents": cats, "confusionMatrix": _matrix(pairs), **_averages(cats)}


def _overlap(a: Dict[str, Any], b: Dict[str, Any]) -> int:
    return max(0, min(a["offset"] + a["length"], b["offset"] + b["length"]) - max(a["offset"], b["offset"]))


def entities_summary(results: Sequence[Dict[str, Any]], categories: Sequence[str] = ()) -> Dict[str, Any]:
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    present: Counter = Counter()  # utterances where the category is labelled or predicted
    pairs: List[Tuple[str, str]] = []
    for r in results:
        exp = r["entitiesResult"]["expectedEntities"]
        pred = r["entitiesResult"]["predictedEntities"]
        exp_keys = Counter((e["category"], e["offset"], e["length"]) for e in exp)
        pred_keys = Counter((e["category"], e["offset"], e["length"]) for e in pred)
        for key in exp_keys | pred_keys:
            hit = min(exp_keys[key], pred_keys[key])
            tp[key[0]] += hit
            fn[key[0]] += exp_keys[key] - hit
            fp[key[0]] += pred_keys[key] - hit
        for cat in {e["category"] for e in exp} | {e["category"] for e in pred}:
            present[cat] += 1
        for e in exp:
            best = max(pred, key=lambda p: _overlap(e, p), default=None)
            pairs.append((e["category"], best["category"] if best and _overlap(e, best) else NONE))
        for p in pred:
            if not any(_overlap(e, p) for e in exp):
                pairs.append((NONE, p["category"]))
    n = len(results)
    cats = {c: _category(tp[c], fp[c], fn[c], n - present[c])
            for c in sorted(set(categories) | set(tp) | set(fp) | set(fn))}
    return {"entities": cats, "confusionMatrix": _matrix(pairs), **_averages(cats)}


def summarize(results: Sequence[Dict[str, Any]], intents: Sequence[str], entity_categories: Sequence[str],
              evaluation_options: Dict[str, Any]) -> Dict[str, Any]:
    return {"intentsEvaluation": intents_summary(results, intents),
            "entitiesEvaluation": entities_summary(results, entity_categories),
            "evaluationOptions": evaluation_options}


def accuracy(results: Sequence[Dict[str, Any]]) -> float:
    if not results:
        return float("nan")
    return sum(1 for r in results if r["intentsResult"]["expectedIntent"] == r["intentsResult"]["predictedIntent"]) / len(results)


# --------------------------------------------------------------------------- the promotion gate


@dataclass(frozen=True)
class GatePolicy:
    """Refuse a candidate for the production deployment when, on the project's frozen Test utterances,
    its accuracy is more than ``max_accuracy_drop`` points below production's, or any intent's F1 is
    more than ``max_intent_f1_drop`` points below production's (points: 1 point = 0.01)."""

    production_deployment: str = "production"
    max_accuracy_drop: float = 2.0
    max_intent_f1_drop: float = 10.0


def gate_verdict(candidate: Sequence[Dict[str, Any]], production: Optional[Sequence[Dict[str, Any]]],
                 policy: GatePolicy) -> Dict[str, Any]:
    """``{"verdict": "passed"|"refused"|"notApplicable", "reasons": [...], "figures": {...}}``."""
    if production is None:
        return {"verdict": "notApplicable", "reasons": ["nothing is deployed to production yet"],
                "figures": {"candidateAccuracy": _r(accuracy(candidate)) if candidate else None}}
    if not candidate:
        return {"verdict": "notApplicable", "reasons": ["the project has no Test utterances"], "figures": {}}
    ca, pa = accuracy(candidate), accuracy(production)
    ci = intents_summary(candidate)["intents"]
    pi = intents_summary(production)["intents"]
    reasons = []
    drop = 100.0 * (pa - ca)
    if drop > policy.max_accuracy_drop:
        reasons.append({"code": "AccuracyDrop",
                        "message": f"accuracy on the Test utterances drops by {drop:.2f} points "
                                   f"({100 * pa:.2f}% -> {100 * ca:.2f}%), more than the allowed "
                                   f"{policy.max_accuracy_drop:g}", "target": "accuracy"})
    f1 = {}
    for intent, pstats in sorted(pi.items()):
        if pstats["truePositiveCount"] + pstats["falseNegativeCount"] == 0:
            continue  # not in the Test set
        cf = ci.get(intent, {"f1": 0.0})["f1"]
        d = 100.0 * (pstats["f1"] - cf)
        f1[intent] = {"production": pstats["f1"], "candidate": cf}
        if d > policy.max_intent_f1_drop:
            reasons.append({"code": "IntentF1Drop",
                            "message": f"F1 of intent {intent!r} drops by {d:.2f} points "
                                       f"({100 * pstats['f1']:.2f} -> {100 * cf:.2f}), more than the "
                                       f"allowed {policy.max_intent_f1_drop:g}", "target": intent})
    return {"verdict": "refused" if reasons else "passed", "reasons": reasons,
            "figures": {"testUtterances": len(candidate), "candidateAccuracy": _r(ca),
                        "productionAccuracy": _r(pa), "intentF1": f1,
                        "maxAccuracyDropPoints": policy.max_accuracy_drop,
                        "maxIntentF1DropPoints": policy.max_intent_f1_drop}}


def _r(x: float) -> float:
    return round(float(x), 6)
