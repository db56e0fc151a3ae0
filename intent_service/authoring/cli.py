"""Authoring commands (run from the repository root):

    python -m intent_service.authoring.cli retail-project [--check]
        regenerate intent_service/data/retail/project.json from the retail CSV files + entities.json
        (--check: exit 1 if the committed file differs)

    python -m intent_service.authoring.cli train-project [--project FILE] [--out MODEL.skops]
        [--label L] [--evaluation manual|percentage]
        train a CLU project file locally through the same code as the :train job (worker.train_assets)
        and print its evaluation; writes a skops model file

    python -m intent_service.authoring.cli bootstrap --endpoint URL --key KEY [--project-file FILE]
        [--project retail-bot] [--label L] [--deployment production] [--if-missing]
        drive an authoring endpoint (this service or Azure CLU): import -> train -> wait -> deploy
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import requests

from . import projectfile as pf
from .evaluation import summarize

PACKAGE_DIR = Path(__file__).resolve().parents[1]
RETAIL_DATA = PACKAGE_DIR / "data" / "retail"
RETAIL_PROJECT = RETAIL_DATA / "project.json"
RETAIL_DESCRIPTION = ("Retail customer-service bot (ko/en). Generated from utterances_*.csv and entities.json "
                      "by: python -m intent_service.authoring.cli retail-project")
API_VERSION = "2023-04-01"


def retail_project_text() -> str:
    return pf.dumps_project(pf.build_project_from_csv(RETAIL_DATA, description=RETAIL_DESCRIPTION))


def cmd_retail_project(args: argparse.Namespace) -> int:
    text = retail_project_text()
    out = Path(args.out)
    if args.check:
        current = out.read_text(encoding="utf-8") if out.is_file() else ""
        if current != text:
            print(f"{out} is out of date: run python -m intent_service.authoring.cli retail-project", file=sys.stderr)
            return 1
        print(f"{out} agrees with the CSV files")
        return 0
    out.write_text(text, encoding="utf-8")
    project = json.loads(text)
    u = project["assets"]["utterances"]
    print(f"wrote {out}: {len(u)} utterances ({sum(x['dataset'] == 'Test' for x in u)} Test), "
          f"{len(project['assets']['intents'])} intents, {len(project['assets']['entities'])} entities")
    return 0


def cmd_train_project(args: argparse.Namespace) -> int:
    from .schema import Limits, parse_project
    from .worker import train_assets

    raw = json.loads(Path(args.project).read_text(encoding="utf-8"))
    project, warnings = parse_project(raw, Limits())
    for w in warnings:
        print(f"warning: {w['message']}", file=sys.stderr)
    assets = raw["assets"]
    train_idx, eval_idx, opts = pf.split(assets, {"kind": args.evaluation})
    version = f"{project.metadata.projectName}.{args.label}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    cfg = pf.TRAINING_CONFIGS[pf.LATEST_TRAINING_CONFIG]
    model, result = train_assets(assets, train_idx, eval_idx, pf.test_indices(assets), version,
                                 project.metadata.projectName, cfg,
                                 project.metadata.settings.confidenceThreshold or None)
    summary = summarize(result["evaluation"], [i["category"] for i in assets["intents"]],
                        [e["category"] for e in assets["entities"]], opts)
    ie, ee = summary["intentsEvaluation"], summary["entitiesEvaluation"]
    print(f"trained {model.version} on {len(train_idx)} utterances in {result['trainingSeconds']:.1f}s; "
          f"evaluated on {len(eval_idx)} ({opts['kind']})")
    print(f"intents: micro F1 {ie['microF1']:.3f}, macro F1 {ie['macroF1']:.3f}")
    for name, c in ie["intents"].items():
        print(f"  {name:15s} P {c['precision']:.3f} R {c['recall']:.3f} F1 {c['f1']:.3f} "
              f"(TP {c['truePositiveCount']}, FP {c['falsePositiveCount']}, FN {c['falseNegativeCount']})")
    print(f"entities: micro F1 {ee['microF1']:.3f}, macro F1 {ee['macroF1']:.3f}")
    if args.out:
        model.save(args.out)
        print(f"wrote {args.out}")
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0


class _Client:
    def __init__(self, endpoint: str, key: str, timeout: float):
        self.base = endpoint.rstrip("/") + "/language/authoring/analyze-conversations"
        self.s = requests.Session()
        self.s.headers["Ocp-Apim-Subscription-Key"] = key
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None,
             params: Optional[Dict[str, Any]] = None) -> requests.Response:
        params = dict(params or {}, **{"api-version": API_VERSION})
        resp = self.s.request(method, self.base + path, params=params, json=body, timeout=30)
        if resp.status_code >= 400 and resp.status_code != 404:
            raise SystemExit(f"{method} {path}: HTTP {resp.status_code}: {resp.text[:500]}")
        return resp

    def wait(self, resp: requests.Response, what: str) -> dict:
        if resp.status_code != 202:
            raise SystemExit(f"{what}: expected 202, got {resp.status_code}: {resp.text[:500]}")
        loc = resp.headers["operation-location"]
        deadline = time.monotonic() + self.timeout
        while True:
            job = self.s.get(loc, timeout=30).json()
            if job.get("status") in ("succeeded", "failed", "cancelled", "partiallyCompleted"):
                if job["status"] != "succeeded":
                    raise SystemExit(f"{what} {job['status']}: {json.dumps(job.get('errors'), ensure_ascii=False)}")
                return job
            if time.monotonic() > deadline:
                raise SystemExit(f"{what}: not finished after {self.timeout:.0f}s")
            time.sleep(min(5.0, float(resp.headers.get("Retry-After", 1)) or 1.0))


def bootstrap(endpoint: str, key: str, project_file: str | Path = RETAIL_PROJECT, project: str = "retail-bot",
              label: str = "retail", deployment: str = "production", if_missing: bool = False,
              timeout: float = 600.0, log: Callable[[str], None] = print) -> dict:
    """Import ``project_file`` as ``project``, train ``label`` (manual split: the file's Test utterances),
    deploy it to ``deployment``, through an authoring endpoint (this service or Azure CLU). With
    ``if_missing``, nothing happens when the deployment exists. Returns the deployment. Raises SystemExit
    with the service's answer when a step fails. What ``make demo`` / ``make run`` call at start."""
    c = _Client(endpoint, key, timeout)
    p, d = project, deployment
    if if_missing:
        r = c.call("GET", f"/projects/{p}/deployments/{d}")
        if r.status_code == 200:
            log(f"{p}/{d} is deployed ({r.json().get('modelId')}); nothing to do")
            return r.json()
    data = json.loads(Path(project_file).read_text(encoding="utf-8"))
    data["metadata"]["projectName"] = p
    t0 = time.monotonic()
    c.wait(c.call("POST", f"/projects/{p}/:import", data), "import")
    log(f"imported {project_file} as {p} ({time.monotonic() - t0:.1f}s)")
    job = c.wait(c.call("POST", f"/projects/{p}/:train",
                        {"modelLabel": label, "trainingMode": "standard", "evaluationOptions": {"kind": "manual"}}),
                 "training")
    log(f"trained {label} ({time.monotonic() - t0:.1f}s, job {job['jobId']})")
    summary = c.call("GET", f"/projects/{p}/models/{label}/evaluation/summary-result").json()
    ie = summary["intentsEvaluation"]
    log(f"evaluation on the Test utterances: intents micro F1 {ie['microF1']:.3f}, macro F1 {ie['macroF1']:.3f}")
    c.wait(c.call("PUT", f"/projects/{p}/deployments/{d}", {"trainedModelLabel": label}), "deployment")
    log(f"deployed {label} to {p}/{d} ({time.monotonic() - t0:.1f}s)")
    return c.call("GET", f"/projects/{p}/deployments/{d}").json()


def cmd_bootstrap(args: argparse.Namespace) -> int:
    bootstrap(args.endpoint, args.key, args.project_file, args.project, args.label, args.deployment,
              args.if_missing, args.timeout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m intent_service.authoring.cli", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("retail-project", help="regenerate the retail CLU project file from the CSV files")
    r.add_argument("--out", default=str(RETAIL_PROJECT))
    r.add_argument("--check", action="store_true", help="exit 1 if the file differs from the CSV files")
    r.set_defaults(func=cmd_retail_project)
    t = sub.add_parser("train-project", help="train a CLU project file locally (the :train code path)")
    t.add_argument("--project", default=str(RETAIL_PROJECT))
    t.add_argument("--label", default="local")
    t.add_argument("--evaluation", choices=("manual", "percentage"), default="manual")
    t.add_argument("--out", help="write the model here (skops)")
    t.add_argument("--summary", help="write the evaluation summary-result here (JSON)")
    t.set_defaults(func=cmd_train_project)
    b = sub.add_parser("bootstrap", help="import + train + deploy a project file through an authoring endpoint")
    b.add_argument("--endpoint", required=True, help="e.g. http://127.0.0.1:5088")
    b.add_argument("--key", required=True, help="authoring key")
    b.add_argument("--project-file", default=str(RETAIL_PROJECT))
    b.add_argument("--project", default="retail-bot")
    b.add_argument("--label", default="retail")
    b.add_argument("--deployment", default="production")
    b.add_argument("--if-missing", action="store_true", help="do nothing if the deployment exists")
    b.add_argument("--timeout", type=float, default=600.0)
    b.set_defaults(func=cmd_bootstrap)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
