"""Training and evaluation run in a child process (``python -m intent_service.authoring.worker``):
the serving process keeps its CPU (and its GIL) for predictions, a training job can be cancelled by
ending the child, and a crash in training cannot take the service down.

``worker.py train REQUEST.json OUT_DIR``: trains on the request's utterances with
``training.train_model``, evaluates on the evaluation split and on the project's frozen Test
utterances, writes ``OUT_DIR/model.skops`` and ``OUT_DIR/result.json``.

``worker.py evaluate REQUEST.json OUT_DIR``: loads each listed model file (SHA-256 pinned) and
predicts the listed utterances (the promotion gate's comparison), writes ``OUT_DIR/result.json``.

Progress goes to ``OUT_DIR/progress.json``; a failure to ``OUT_DIR/error.json`` (exit code 1).
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from ..model import IntentModel


def _write(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def train_assets(assets: dict, train_indices: Sequence[int], eval_indices: Sequence[int],
                 test_indices: Sequence[int], version: str, name: str, training_config: dict,
                 threshold: Optional[float] = None,
                 progress: Optional[Callable[[Dict[str, Any]], None]] = None) -> Tuple[IntentModel, Dict[str, Any]]:
    """Train on ``assets['utterances'][train_indices]`` with ``training.train_model`` and predict the
    evaluation split and the frozen Test utterances. The ``:train`` job and the CLI
    (``python -m intent_service.authoring.cli train-project``) both train through here.
    Returns ``(model, result)``."""
    from ..training import train_model
    from .evaluation import predict_utterances
    from .projectfile import dataset_from_assets

    utts = assets["utterances"]
    t0 = time.perf_counter()
    ds = dataset_from_assets(assets, train_indices)
    kwargs = dict(training_config or {})
    if threshold:
        kwargs["threshold"] = float(threshold)
    model = train_model(ds, version=version, name=name, **kwargs)
    train_s = time.perf_counter() - t0
    if progress:
        progress({"phase": "evaluating", "percent": 90, "trainingSeconds": train_s})
    t1 = time.perf_counter()
    evaluation = predict_utterances(model, [utts[i] for i in eval_indices])
    same = list(eval_indices) == list(test_indices)
    frozen = evaluation if same else predict_utterances(model, [utts[i] for i in test_indices])
    return model, {"trainingSeconds": train_s, "evaluationSeconds": time.perf_counter() - t1,
                   "evaluation": evaluation, "frozenTest": frozen, "intents": model.intents,
                   "modelVersion": model.version, "dataSha256": model.data_sha256}


def train(req: dict, out: Path) -> None:
    _write(out / "progress.json", {"phase": "training", "percent": 5})
    model, result = train_assets(req["assets"], req["trainIndices"], req["evalIndices"], req["testIndices"],
                                 req["version"], req.get("name", "model"), req.get("trainingConfig") or {},
                                 req.get("threshold"), lambda p: _write(out / "progress.json", p))
    model.save(str(out / "model.skops"))
    _write(out / "result.json", result)


def evaluate(req: dict, out: Path) -> None:
    from ..model import load_model
    from .evaluation import predict_utterances

    results = {}
    for item in req["models"]:
        model = load_model(item["path"], expected_sha256=item["sha256"])
        results[item["sha256"]] = predict_utterances(model, req["utterances"])
    _write(out / "result.json", {"results": results})


def _exit_with_parent() -> None:
    """End this child if the service that started it goes away (no orphaned training)."""
    import threading

    parent = os.getppid()

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    mode, req_path, out_dir = argv
    out = Path(out_dir)
    _exit_with_parent()
    try:
        os.nice(int(os.environ.get("INTENT_WORKER_NICE", "10")))
    except (OSError, ValueError):
        pass
    try:
        req = json.loads(Path(req_path).read_text(encoding="utf-8"))
        {"train": train, "evaluate": evaluate}[mode](req, out)
        return 0
    except Exception as exc:  # reported to the job; the parent logs it
        _write(out / "error.json", {"errorClass": type(exc).__name__, "message": str(exc)[:2000],
                                    "trace": traceback.format_exc()[-4000:]})
        return 1


if __name__ == "__main__":
    sys.exit(main())
