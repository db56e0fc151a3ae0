"""Command line: train, build-retail, evaluate, serve, clinc150.

Run from the repository root: ``python -m intent_service <command> ...``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

if TYPE_CHECKING:
    from .data import Dataset


PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_RETAIL_DATA = PACKAGE_DIR / "data" / "retail"
DEFAULT_RETAIL_MODEL = PACKAGE_DIR / "models" / "retail.skops"
DEFAULT_PORT = 5088


def configure_logging(level: str = "INFO") -> None:
    logger = logging.getLogger("intent_service")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(os.environ.get("INTENT_LOG_LEVEL", level).upper())


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.2f}%"


# --------------------------------------------------------------------------- commands


def _config_from_args(args: argparse.Namespace) -> dict:
    from .model import normalize_config

    return normalize_config(None, embedding_weight=getattr(args, "embedding_weight", None),
                            C=getattr(args, "C", None))


def _print_cv(fig: Dict[str, Any], top: int = 10) -> None:
    from .training import format_figures

    print(f"out-of-fold ({fig['folds']}-fold; each fold predicted by a model trained and "
          f"calibrated without it): in-scope accuracy {_pct(fig['in_scope_accuracy'])}, "
          f"out-of-scope recall {_pct(fig['oos_recall'])}")
    for lang, f in fig.get("by_language", {}).items():
        print(f"  {lang}: in-scope accuracy {_pct(f['in_scope_accuracy'])} ({f['n_in_scope']}), "
              f"out-of-scope recall {_pct(f['oos_recall'])} ({f['n_oos']})")
    print(format_figures(fig, top=top))


def cmd_train(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .training import cross_validate, figures_json, train_model

    t0 = time.perf_counter()
    ds = load_dataset(args.data, args.entities)
    val = load_dataset(args.val, args.entities) if args.val else None
    cfg = _config_from_args(args)
    rule = getattr(args, "threshold_rule", "accuracy")
    model = train_model(ds, validation=val, config=cfg, threshold=args.threshold,
                        threshold_rule=rule, oos_recall_target=args.oos_recall_target,
                        version=args.version, name=args.name or Path(args.out).stem)
    train_s = time.perf_counter() - t0
    cv = None
    if getattr(args, "cv", 0):
        cv = cross_validate(ds, folds=args.cv, config=cfg, threshold=args.threshold,
                            threshold_rule=rule, oos_recall_target=args.oos_recall_target)
        model.meta["evaluation"]["cross_validation"] = {
            k: v for k, v in figures_json(cv).items() if k not in ("confusions", "per_intent")}
    model.save(args.out)
    cal = model.meta["calibration"]
    held = model.meta["evaluation"]["held_out"]
    print(f"trained {model.version} on {len(ds)} utterances, {len(model.classes)} classes, "
          f"entities: {', '.join(model.extractor.categories) or '-'} ({train_s:.1f}s)")
    print(f"configuration: {json.dumps(model.meta['config'], ensure_ascii=False)}")
    print(f"data sha256 {ds.sha256}")
    if model.meta.get("encoder"):
        enc = model.meta["encoder"]
        print(f"encoder {enc['name']} ({enc['revision'][:12]}), files: "
              + ", ".join(f"{n} {d[:12]}" for n, d in enc["files"].items()))
    print(f"calibration ({cal['source']}, rule {cal['threshold_rule']}): temperature "
          f"{cal['temperature']:.2f}, threshold {cal['threshold']:.3f}; on those held-out scores: "
          f"in-scope accuracy {_pct(held['in_scope_accuracy'])}, out-of-scope recall "
          f"{_pct(held['oos_recall'])}")
    if cv is not None:
        _print_cv(cv, top=10)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f}s")
    return 0


def _up_to_date(out: Path, ds: Dataset) -> bool:
    """The model file exists, loads (encoder verified) and was built from this data with the
    current configuration and encoder."""
    from .encoder import ENCODER_FILES
    from .model import DEFAULT_CONFIG, ModelLoadError, load_model

    if not out.is_file():
        return False
    try:
        meta = load_model(str(out)).meta
    except ModelLoadError as exc:  # unreadable model or changed encoder: rebuild it
        print(f"rebuilding {out}: {type(exc).__name__}: {exc}")
        return False
    cfg = {k: (meta.get("config") or {}).get(k) for k in DEFAULT_CONFIG}
    same = (meta.get("data_sha256") == ds.sha256 and cfg == DEFAULT_CONFIG
            and (meta.get("encoder") or {}).get("files") == ENCODER_FILES)
    if same:
        print(f"{out} is up to date (version {meta.get('version')}, data sha256 {ds.sha256[:12]})")
    return same


def cmd_build_retail(args: argparse.Namespace) -> int:
    """Idempotent: rebuilds only when the data, the configuration or the encoder changed."""
    from .data import load_dataset

    out = Path(args.out)
    ds = load_dataset(DEFAULT_RETAIL_DATA)
    if not args.force and _up_to_date(out, ds):
        return 0
    ns = argparse.Namespace(data=str(DEFAULT_RETAIL_DATA), entities=None, val=None,
                            out=str(out), C=None, threshold=None, oos_recall_target=0.9,
                            threshold_rule="accuracy", version=None, name="retail",
                            cv=0 if args.no_cv else 5)
    return cmd_train(ns)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .model import load_model
    from .training import cross_validate, evaluate_model, figures_json, format_figures

    ds = load_dataset(args.data, args.entities) if args.entities else load_dataset(args.data)
    if args.cv:
        fig = cross_validate(ds, folds=args.cv, config=_config_from_args(args))
        print(f"cross-validation of the current configuration on {args.data}")
        _print_cv(fig, top=args.top)
    else:
        model = load_model(args.model, expected_sha256=args.model_sha256)
        fig = evaluate_model(model, ds)
        print(f"model {model.version} (data sha256 {model.data_sha256[:12]}), "
              f"threshold {model.threshold:.3f}, evaluated on {args.data}")
        print(format_figures(fig, top=args.top))
    if args.json:
        Path(args.json).write_text(json.dumps(figures_json(fig), indent=2, ensure_ascii=False),
                                   encoding="utf-8")
    return 0


def cmd_clinc150(args: argparse.Namespace) -> int:
    from . import clinc
    from .data import export_clinc150, load_clinc150
    from .model import DEFAULT_CONFIG

    if args.export:
        for p in export_clinc150(args.export, args.clinc_dir):
            print(f"wrote {p}")
        return 0
    t0 = time.perf_counter()
    splits, sha = load_clinc150(args.clinc_dir)
    train, val = splits["train"], splits["val"]
    print("CLINC150 Full (Larson et al., EMNLP-IJCNLP 2019, CC BY 3.0), data sha256 " + sha[:12])
    print(f"train + oos_train {len(train)}, val + oos_val {len(val)}, test + oos_test "
          f"{len(splits['test'])} utterances")
    report: dict = {"data_sha256": sha}
    from .training import _memo

    with _memo({"embedding_weight": 1.0}):  # train + val are encoded once for all the fits
        if args.select:
            print("configuration selection on val + oos_val (criterion: val accuracy with "
                  "out-of-scope as a class, at each candidate's own val-chosen threshold; "
                  "one-standard-error rule):")
            sel = clinc.select_config(train, val)
            cfg = sel["chosen"]
            report["selection"] = {k: sel[k] for k in ("rows", "best", "standard_error")}
            print(f"chosen: {clinc._cfg_name(cfg)}")
        else:
            cfg = dict(DEFAULT_CONFIG)
            print(f"configuration: {clinc._cfg_name(cfg)} (chosen on val by --select; README)")
        settings = clinc.fit_settings(train, val, cfg)  # every choice fixed here, on val only
    fit_s = time.perf_counter() - t0
    # ---- choices are fixed; test + oos_test are scored once
    clinc.evaluate_settings(settings, splits["test"])
    if args.out:
        settings["shipped"]["model"].save(args.out)
        print(f"wrote {args.out}")
    print(f"fitted in {fit_s:.1f}s; test evaluated once ({time.perf_counter() - t0:.1f}s total)")
    print()
    print("| setting | temperature / threshold (val) | val in-scope / OOS recall | "
          "TEST in-scope accuracy | TEST OOS recall |")
    print("|---|---|---|---|---|")
    for name in ("oos-train", "oos-threshold", "shipped"):
        s = settings[name]
        m, v, te = s["model"], s["val"], s["test"]
        label = {"shipped": "**shipped: oos-train + threshold**"}.get(name, name)
        print(f"| {label} | {m.temperature:.2f} / {m.threshold:.3f} | "
              f"{100 * v['in_scope_accuracy']:.2f} / {100 * v['oos_recall']:.1f} | "
              f"{100 * te['in_scope_accuracy']:.2f} % | {100 * te['oos_recall']:.1f} % |")
        report[name] = {"temperature": m.temperature, "threshold": m.threshold,
                        "val": {k: v[k] for k in ("in_scope_accuracy", "oos_recall",
                                                   "overall_accuracy")},
                        "test": {k: te[k] for k in ("in_scope_accuracy", "oos_recall",
                                                     "oos_precision", "overall_accuracy")}}
    for setting, rows in clinc.PAPER_ROWS.items():
        for who, acc, rec in rows:
            print(f"| paper ({setting}): {who} | | | {acc:.1f} % | {rec:.1f} % |")
    print()
    print("--- test confusion summary, shipped setting ---")
    from .training import format_figures

    print(format_figures(settings["shipped"]["test"], top=args.top, per_intent=False))
    report["config"] = cfg
    report["encoder"] = settings["shipped"]["model"].meta.get("encoder")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .model import (ModelConfigError, check_url, is_url, parse_max_model_bytes,
                        parse_sha256_pin, redact_url)

    configure_logging(args.log_level)
    # settings that can never load a model stop here (exit 2) rather than leave readiness at 503
    try:
        pin = parse_sha256_pin(args.model_sha256)
        if is_url(args.model):
            check_url(args.model)
            if pin is None:
                raise ModelConfigError(f"model URL {redact_url(args.model)} needs a SHA-256 pin "
                                       "(--model-sha256 or INTENT_MODEL_SHA256)")
        max_bytes = parse_max_model_bytes(args.model_max_bytes)
    except (ModelConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # the factory reads its configuration from the environment, so every worker gets it
    os.environ["INTENT_MODEL"] = args.model
    os.environ["INTENT_MODEL_MAX_BYTES"] = str(max_bytes)
    if args.key:
        os.environ["INTENT_API_KEY"] = args.key
    if pin:
        os.environ["INTENT_MODEL_SHA256"] = pin
    if args.added_latency_ms is not None:
        from .app import parse_added_latency_ms

        try:
            parse_added_latency_ms(args.added_latency_ms)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        os.environ["INTENT_ADDED_LATENCY_MS"] = str(args.added_latency_ms)
    print(f"intent_service: starting on http://{args.host}:{args.port} with {args.workers} "
          f"worker(s); model {redact_url(args.model)}; key check "
          f"{'on' if os.environ.get('INTENT_API_KEY') else 'off'}"
          + (f"; added latency {os.environ['INTENT_ADDED_LATENCY_MS']} ms"
             if os.environ.get("INTENT_ADDED_LATENCY_MS") else ""), file=sys.stderr, flush=True)
    uvicorn.run("intent_service.app:create_app_from_env", factory=True, host=args.host,
                port=args.port, workers=args.workers, log_level=args.log_level.lower(),
                access_log=args.access_log, timeout_graceful_shutdown=10,
                http="intent_service.http_protocol:NoDelayH11Protocol")
    return 0


# --------------------------------------------------------------------------- parser


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedding-weight", type=float, default=None,
                   help="weight of the sentence embedding beside the TF-IDF features "
                        "(0: TF-IDF only; default: model.DEFAULT_CONFIG)")
    p.add_argument("--C", type=float, default=None, help="regularisation of the classifier")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m intent_service", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from utterance files + entities.json")
    t.add_argument("--data", default=str(DEFAULT_RETAIL_DATA),
                   help="CSV/JSONL file or directory (default: the retail data)")
    t.add_argument("--entities", help="entity definition JSON (default: DATA/entities.json)")
    t.add_argument("--val", help="validation data for calibration (default: cross-validation)")
    t.add_argument("--out", default=str(DEFAULT_RETAIL_MODEL))
    _add_config_args(t)
    t.add_argument("--threshold", type=float, help="fixed out-of-scope threshold (default: tuned)")
    t.add_argument("--threshold-rule", choices=("accuracy", "recall-target"), default="accuracy",
                   help="accuracy (default): the held-out accuracy with out-of-scope as a class "
                        "is maximised; recall-target: the old rule, see --oos-recall-target")
    t.add_argument("--oos-recall-target", type=float, default=0.9,
                   help="with --threshold-rule recall-target: the held-out OOS recall aimed for")
    t.add_argument("--cv", type=int, default=0, metavar="K",
                   help="also report K-fold out-of-fold figures (stored in the model's meta)")
    t.add_argument("--version", help="model version string (default: NAME-TIMESTAMP-DATAHASH)")
    t.add_argument("--name", help="model name used in the default version")
    t.set_defaults(func=cmd_train)

    b = sub.add_parser("build-retail", help="build models/retail.skops (skips if up to date)")
    b.add_argument("--out", default=str(DEFAULT_RETAIL_MODEL))
    b.add_argument("--force", action="store_true")
    b.add_argument("--no-cv", action="store_true",
                   help="skip the 5-fold out-of-fold evaluation (faster)")
    b.set_defaults(func=cmd_build_retail)

    e = sub.add_parser("evaluate", help="accuracy, OOS recall and confusions on a dataset")
    e.add_argument("--model", default=str(DEFAULT_RETAIL_MODEL), help="model path or https URL")
    e.add_argument("--model-sha256", default=os.environ.get("INTENT_MODEL_SHA256"),
                   help="expected SHA-256 of the model file; required for a URL "
                        "(env INTENT_MODEL_SHA256)")
    e.add_argument("--data", required=True, help="CSV/JSONL file or directory")
    e.add_argument("--cv", type=int, default=0, metavar="K",
                   help="instead of a model: K-fold out-of-fold evaluation of the configuration "
                        "on DATA (each fold trained and calibrated without it)")
    _add_config_args(e)
    e.add_argument("--entities", help=argparse.SUPPRESS)
    e.add_argument("--top", type=int, default=15, help="confusions to list")
    e.add_argument("--json", help="also write the figures to this JSON file")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("clinc150", help="train/tune/evaluate on CLINC150 Full")
    c.add_argument("--clinc-dir", default=None,
                   help="directory with data_full.json (default: $CLINC150_DIR, else the copy "
                        "shipped in intent_service/data/clinc150)")
    c.add_argument("--select", action="store_true",
                   help="first choose the configuration on val among clinc.CANDIDATES (slow)")
    c.add_argument("--out", help="also save the shipped-setting CLINC150 model here")
    c.add_argument("--json", help="also write the figures to this JSON file")
    c.add_argument("--export", metavar="DIR",
                   help="only convert CLINC150 to train/val/test.jsonl in DIR")
    c.add_argument("--top", type=int, default=10)
    c.set_defaults(func=cmd_clinc150)

    s = sub.add_parser("serve", help="run the HTTP service (uvicorn)")
    s.add_argument("--model", default=os.environ.get("INTENT_MODEL", str(DEFAULT_RETAIL_MODEL)),
                   help="skops model path or https URL (env INTENT_MODEL)")
    s.add_argument("--model-sha256", default=os.environ.get("INTENT_MODEL_SHA256"),
                   help="expected SHA-256 of the model file; required for a URL "
                        "(env INTENT_MODEL_SHA256)")
    s.add_argument("--model-max-bytes", default=os.environ.get("INTENT_MODEL_MAX_BYTES"),
                   help="largest model file accepted, in bytes (env INTENT_MODEL_MAX_BYTES; "
                        "default 209715200 = 200 MiB)")
    s.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    s.add_argument("--port", type=int, default=int(os.environ.get("PORT", DEFAULT_PORT)))
    s.add_argument("--key", default=os.environ.get("INTENT_API_KEY"),
                   help="required Ocp-Apim-Subscription-Key (env INTENT_API_KEY)")
    s.add_argument("--workers", type=int,
                   default=int(os.environ.get("INTENT_WORKERS", os.environ.get("WEB_CONCURRENCY", 1))),
                   help="uvicorn worker processes (env INTENT_WORKERS; default 1)")
    s.add_argument("--log-level", default=os.environ.get("INTENT_LOG_LEVEL", "info"))
    s.add_argument("--access-log", action="store_true", help="log every request")
    s.add_argument("--added-latency-ms", type=float, default=None,
                   help="delay every prediction answer by this many ms without blocking the event loop "
                        "(benchmarks: a slow model; env INTENT_ADDED_LATENCY_MS; default 0)")
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    from .data import DataError
    from .entities import EntitySpecError
    from .model import ModelLoadError

    try:
        return args.func(args)
    except (DataError, EntitySpecError, ModelLoadError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
