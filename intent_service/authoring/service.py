"""The authoring operations (HTTP-independent): projects, import/export, training jobs, trained
models and their evaluation, deployments with the promotion gate, the audit log and the events.

Every operation that CLU runs as a long-running operation creates a job document in the store and runs
on a background thread of the replica that accepted it; any replica answers the job's status from the
store. A running job's replica refreshes the job's ``lastUpdatedDateTime`` (a heartbeat); a job whose
heartbeat is older than ``stale_job_seconds`` is reported failed (its replica stopped).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import projectfile as pf
from .config import AuthoringConfig
from .errors import ApiError, bad_request, conflict, not_found, project_not_found, too_many
from .evaluation import gate_verdict, summarize
from .events import EventSink
from .registry import DeploymentRegistry
from .repository import Repository
from .schema import (DeployRequest, ProjectPatch, SwapRequest, TrainRequest, check_name,
                     dump, parse, parse_project)
from .storage import PreconditionFailed

log = logging.getLogger("intent_service.authoring")

TERMINAL = ("succeeded", "failed", "cancelled", "partiallyCompleted")
JOB_TTL_DAYS = 7
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
LANGUAGES = [{"languageName": "Korean", "languageCode": "ko"}, {"languageName": "English", "languageCode": "en"}]


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def iso(t: Optional[_dt.datetime] = None) -> str:
    return (t or now()).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(s: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def public(job: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in job.items() if not k.startswith("_")}


class AuthoringService:
    def __init__(self, config: AuthoringConfig, repo: Repository, registry: DeploymentRegistry,
                 events: EventSink):
        self.config = config
        self.repo = repo
        self.registry = registry
        self.events = events
        self.replica = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._training = 0
        self._training_lock = threading.Lock()
        self._deploy_lock = threading.Lock()  # one deployment change at a time on this replica
        self._threads: List[threading.Thread] = []

    # ------------------------------------------------------------------ helpers
    def _project(self, p: str) -> Dict[str, Any]:
        check_name(p, "project name", "projectName")
        meta, _ = self.repo.project(p)
        if meta is None:
            raise project_not_found(p)
        return meta

    def _touch_project(self, p: str, **fields: Any) -> None:
        for _ in range(10):
            meta, etag = self.repo.project(p)
            if meta is None:
                return
            meta.update(fields)
            try:
                self.repo.put_project(p, meta, if_match=etag)
                return
            except PreconditionFailed:
                continue

    def _audit(self, p: str, who: str, action: str, outcome: str, **fields: Any) -> None:
        entry = {"time": iso(now()), "who": who, "action": action, "projectName": p, "outcome": outcome}
        entry.update({k: v for k, v in fields.items() if v is not None})
        try:
            self.repo.append_audit(p, entry)
        except Exception:  # the audit log must not lose silently: log loudly
            log.exception("AUDIT WRITE FAILED: %s", json.dumps(entry, ensure_ascii=False))

    def _spawn(self, target: Callable[..., Any], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name=f"job-{target.__name__}")
        t.start()
        self._threads = [x for x in self._threads if x.is_alive()] + [t]

    # ------------------------------------------------------------------ jobs
    def _new_job(self, p: Optional[str], kind: str, **extra: Any) -> Dict[str, Any]:
        t = now()
        job: Dict[str, Any] = {"jobId": str(uuid.uuid4()), "createdDateTime": iso(t), "lastUpdatedDateTime": iso(t),
               "expirationDateTime": iso(t + _dt.timedelta(days=JOB_TTL_DAYS)), "status": "notStarted",
               "errors": [], "warnings": [], "_kind": kind, "_project": p, "_owner": self.replica}
        job.update(extra)
        self.repo.put_job(p, job, create=True)
        return job

    def _update_job(self, p: Optional[str], job_id: str, mutate: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
        for _ in range(20):
            job, etag = self.repo.job(p, job_id)
            if job is None:
                raise LookupError(job_id)
            mutate(job)
            job["lastUpdatedDateTime"] = iso()
            try:
                self.repo.put_job(p, job, etag)
                return job
            except PreconditionFailed:
                continue
        raise RuntimeError(f"job {job_id}: too many concurrent updates")

    def _finish(self, p: Optional[str], job_id: str, status: str, error: Optional[ApiError] = None,
                **fields: Any) -> Dict[str, Any]:
        def mutate(job: Dict[str, Any]) -> None:
            job["status"] = status
            if error is not None:
                job["errors"] = [error.job_error()]
            job.update(fields)
        return self._update_job(p, job_id, mutate)

    def _heartbeat(self, p: Optional[str], job_id: str, done: threading.Event) -> None:
        """While a job runs here, refresh its ``lastUpdatedDateTime`` in every phase (preparing, training, storing the
        model), so no replica reports a live job failed: every quarter of ``stale_job_seconds`` less the timestamp's
        one-second resolution (CLU's format has whole seconds, so a fresh beat can read up to 1 s old)."""
        interval = max(0.25, (self.config.stale_job_seconds - 1.0) / 4)
        while not done.wait(interval):
            try:
                self._update_job(p, job_id, lambda j: None)
            except Exception:  # noqa: BLE001 - the next beat tries again; the job itself is unaffected
                log.warning("heartbeat of job %s failed", job_id, exc_info=True)

    def _run_job(self, p: Optional[str], job_id: str, work: Callable[[], Dict[str, Any]],
                 on_error: Optional[Callable[[ApiError], None]] = None) -> None:
        beating = threading.Event()
        try:
            self._update_job(p, job_id, lambda j: j.update(status="running"))
            self._spawn(self._heartbeat, p, job_id, beating)
            try:
                fields = work() or {}
            finally:
                beating.set()
            self._finish(p, job_id, "succeeded", **fields)
        except Exception as exc:
            err = exc if isinstance(exc, ApiError) else ApiError(500, "InternalServerError",
                                                                   f"The operation failed: {type(exc).__name__}")
            if not isinstance(exc, ApiError):
                log.exception("job %s failed", job_id)
            try:
                self._finish(p, job_id, "failed", err)
            except Exception:
                log.exception("could not record the failure of job %s", job_id)
            if on_error is not None:
                on_error(err)

    def get_job(self, p: Optional[str], job_id: str, kind: str, deployment: Optional[str] = None) -> Dict[str, Any]:
        if p is not None:
            check_name(p, "project name", "projectName")
        job, etag = self.repo.job(p, job_id)
        if job is None or job.get("_kind") != kind or (deployment is not None and job.get("_deployment") != deployment):
            raise ApiError(404, "OperationNotFound", f"The job {job_id!r} was not found.")
        if job["status"] not in TERMINAL:
            age = (now() - parse_iso(job["lastUpdatedDateTime"])).total_seconds()
            if age > self.config.stale_job_seconds:
                def mutate(j):
                    if j["status"] not in TERMINAL:
                        j["status"] = "failed"
                        j["errors"] = [{"code": "InternalServerError",
                                        "message": "The replica running this job stopped; start it again."}]
                try:
                    job = self._update_job(p, job_id, mutate)
                except Exception:
                    pass
        return public(job)

    # ------------------------------------------------------------------ projects
    def list_projects(self) -> List[Dict[str, Any]]:
        return self.repo.list_projects()

    def get_project(self, p: str) -> Dict[str, Any]:
        return self._project(p)

    def patch_project(self, p: str, body: Any, who: str) -> Tuple[Dict[str, Any], bool]:
        check_name(p, "project name", "projectName")
        patch = parse(ProjectPatch, body, "project")
        if patch.projectName is not None and patch.projectName != p:
            raise bad_request(f"projectName {patch.projectName!r} differs from the URL's {p!r}.", "projectName")
        for _ in range(10):
            meta, etag = self.repo.project(p)
            created = meta is None
            if meta is None:
                if p in ("global",):
                    raise bad_request("'global' is a reserved name.", "projectName")
                if patch.projectKind is None or patch.language is None:
                    raise bad_request("Creating a project needs projectKind and language.",
                                      "projectKind" if patch.projectKind is None else "language")
                self._check_project_quota()
                t = iso()
                meta = {"projectName": p, "projectKind": "Conversation", "language": patch.language,
                        "multilingual": bool(patch.multilingual), "description": patch.description or "",
                        "settings": {"confidenceThreshold": 0.0}, "createdDateTime": t, "lastModifiedDateTime": t}
            for key in ("language", "multilingual", "description"):
                value = getattr(patch, key)
                if value is not None:
                    meta[key] = value
            if patch.settings is not None:
                meta["settings"] = dump(patch.settings)
            meta["lastModifiedDateTime"] = iso()
            try:
                if created:
                    self.repo.put_project(p, meta, if_none_match=True)
                else:
                    self.repo.put_project(p, meta, if_match=etag)
                return meta, created
            except PreconditionFailed:
                continue
        raise conflict("The project changed concurrently; retry.")

    def _check_project_quota(self) -> None:
        if len(self.repo.list_projects()) >= self.config.limits.max_projects:
            raise ApiError(403, "QuotaExceeded", f"The limit of {self.config.limits.max_projects} projects is reached.")

    def delete_project(self, p: str, who: str) -> Dict[str, Any]:
        self._project(p)
        job = self._new_job(None, "deleteProject", _deletes=p)
        self._spawn(self._run_job, None, job["jobId"], lambda: self._delete_project_work(p, who, job["jobId"]))
        return public(job)

    def _delete_project_work(self, p: str, who: str, job_id: str) -> Dict[str, Any]:
        with self._deploy_lock:
            doc, etag = self.repo.deployments(p)
            removed = doc.get("deployments", {})
            if etag is not None:
                self.repo.store.delete(self.repo.deployments_name(p))
            self.registry.apply(p, None)
        digests = {m.get("modelSha256") for m in self.repo.list_models(p)} | {d.get("modelSha256") for d in removed.values()}
        self.repo.delete_prefix(f"projects/{p}/")
        self.repo.gc_content(digests)
        self._audit(p, who, "deleteProject", "succeeded", jobId=job_id,
                    **{"from": {name: _model_ref(d) for name, d in removed.items()} or None})
        for name, d in removed.items():
            self.events.emit("IntentService.Deployment.Deleted", p, f"deployments/{name}",
                             {"projectName": p, "deploymentName": name, "from": _model_ref(d), "to": None,
                              "jobId": job_id, "who": who, "reason": "project deleted"})
        return {}

    # ------------------------------------------------------------------ import / export
    def import_project(self, p: str, body: Any, fmt: Optional[str], who: str) -> Dict[str, Any]:
        check_name(p, "project name", "projectName")
        if fmt not in (None, "", "Conversation"):
            raise bad_request(f"format {fmt!r} is not supported; use 'Conversation'.", "format")
        project, warnings = parse_project(body, self.config.limits)
        if project.metadata.projectName != p:
            warnings.append({"code": "ProjectNameReplaced",
                             "message": f"metadata.projectName {project.metadata.projectName!r} was replaced "
                                        f"by {p!r} (the project in the URL)."})
        meta, _ = self.repo.project(p)
        if meta is None:
            self._check_project_quota()
        job = self._new_job(p, "import", warnings=warnings)
        data = dump(project)
        self._spawn(self._run_job, p, job["jobId"], lambda: self._import_work(p, data, who, job["jobId"]))
        return public(job)

    def _import_work(self, p: str, data: Dict[str, Any], who: str, job_id: str) -> Dict[str, Any]:
        md = data["metadata"]
        for _ in range(10):
            meta, etag = self.repo.project(p)
            t = iso()
            new = dict(meta or {"createdDateTime": t})
            new.update({"projectName": p, "projectKind": "Conversation", "language": md["language"],
                        "multilingual": md.get("multilingual", False), "description": md.get("description", ""),
                        "settings": md.get("settings", {"confidenceThreshold": 0.0}), "lastModifiedDateTime": t})
            try:
                if meta is None:
                    self.repo.put_project(p, new, if_none_match=True)
                else:
                    self.repo.put_project(p, new, if_match=etag)
                break
            except PreconditionFailed:
                continue
        assets = data["assets"]
        self.repo.put_assets(p, assets)
        self._audit(p, who, "import", "succeeded", jobId=job_id,
                    to={"utterances": len(assets.get("utterances", [])), "intents": len(assets.get("intents", [])),
                        "testSetSha256": pf.testset_sha256(assets)})
        return {}

    def _project_file(self, p: str, meta: Dict[str, Any], assets: Dict[str, Any]) -> Dict[str, Any]:
        return {"projectFileVersion": pf.PROJECT_FILE_VERSION, "stringIndexType": "Utf16CodeUnit",
                "metadata": {"projectKind": "Conversation", "projectName": p, "language": meta["language"],
                             "multilingual": meta.get("multilingual", False),
                             "description": meta.get("description", ""),
                             "settings": meta.get("settings", {"confidenceThreshold": 0.0})},
                "assets": assets}

    def export_project(self, p: str, string_index_type: Optional[str], fmt: Optional[str], label: Optional[str],
                       result_url: Callable[[str], str]) -> Dict[str, Any]:
        meta = self._project(p)
        if string_index_type != "Utf16CodeUnit":
            raise bad_request("stringIndexType must be 'Utf16CodeUnit'.", "stringIndexType")
        if fmt not in (None, "", "Conversation"):
            raise bad_request(f"format {fmt!r} is not supported; use 'Conversation'.", "format")
        if label:
            if self.repo.model(p, label) is None:
                raise not_found(f"The trained model {label!r} was not found.")
        job = self._new_job(p, "export")

        def work():
            assets = self.repo.model_assets(p, label) if label else self.repo.assets(p)
            if assets is None:
                assets = {"projectKind": "Conversation", "intents": [], "entities": [], "utterances": []}
            self.repo.put_export(p, job["jobId"], self._project_file(p, meta, assets))
            return {"resultUrl": result_url(job["jobId"])}

        self._spawn(self._run_job, p, job["jobId"], work)
        return public(job)

    def export_result(self, p: str, job_id: str) -> Dict[str, Any]:
        self.get_job(p, job_id, "export")
        doc = self.repo.export(p, job_id)
        if doc is None:
            raise not_found("The export is not ready or was not found.")
        return doc

    # ------------------------------------------------------------------ training
    def train(self, p: str, body: Any, who: str) -> Dict[str, Any]:
        meta = self._project(p)
        req = parse(TrainRequest, body, "training request")
        check_name(req.modelLabel, "model label", "modelLabel")
        version = req.trainingConfigVersion or "latest"
        if version == "latest":
            version = pf.LATEST_TRAINING_CONFIG
        if version not in pf.TRAINING_CONFIGS:
            raise bad_request(f"Unknown trainingConfigVersion {req.trainingConfigVersion!r}; known: "
                              f"{', '.join(['latest', *pf.TRAINING_CONFIGS])}.", "trainingConfigVersion")
        opts = dump(req.evaluationOptions) if req.evaluationOptions else {"kind": "percentage"}
        if opts.get("kind") == "percentage":
            tr, te = opts.get("trainingSplitPercentage"), opts.get("testingSplitPercentage")
            if tr is not None and te is not None and tr + te != 100:
                raise bad_request("trainingSplitPercentage + testingSplitPercentage must be 100.",
                                  "evaluationOptions.testingSplitPercentage")
        assets = self.repo.assets(p)
        if not assets or not assets.get("utterances"):
            raise bad_request("The project has no utterances; import a project file first.", "assets.utterances")
        train_idx, eval_idx, eff = pf.split(assets, opts)
        if eff["kind"] == "manual" and not eval_idx:
            raise bad_request("evaluationOptions.kind 'manual' needs utterances with dataset 'Test'.",
                              "evaluationOptions.kind")
        intents = {assets["utterances"][i]["intent"] for i in train_idx}
        if len(intents) < 2:
            raise bad_request("Training needs utterances of at least two intents.", "assets.utterances")
        with self._training_lock:
            if self._training >= self.config.limits.max_training_jobs:
                raise too_many(f"{self._training} training job(s) already running on this replica "
                               f"(limit {self.config.limits.max_training_jobs}); retry later.", retry_after=10)
            self._training += 1
        try:
            t = now()
            status0 = {"percentComplete": 0, "status": "notStarted"}
            job = self._new_job(p, "train", result={
                "modelLabel": req.modelLabel, "trainingConfigVersion": version, "trainingMode": req.trainingMode,
                "trainingStatus": dict(status0), "evaluationStatus": dict(status0),
                "estimatedEndDateTime": iso(t + _dt.timedelta(seconds=30))})
        except BaseException:
            with self._training_lock:
                self._training -= 1
            raise
        stamp = t.strftime("%Y%m%dT%H%M%SZ")
        work = {"assets": assets, "trainIndices": train_idx, "evalIndices": eval_idx,
                "testIndices": pf.test_indices(assets), "version": f"{p}.{req.modelLabel}.{stamp}", "name": p,
                "trainingConfig": pf.TRAINING_CONFIGS[version],
                "threshold": (meta.get("settings") or {}).get("confidenceThreshold") or None}
        self._spawn(self._train_job, p, job["jobId"], req.modelLabel, version, req.trainingMode, eff, work, who)
        return public(job)

    def list_training_jobs(self, p: str) -> List[Dict[str, Any]]:
        self._project(p)
        return [public(j) for j in self.repo.list_jobs(p) if j.get("_kind") == "train"]

    def cancel_training(self, p: str, job_id: str, who: str) -> Dict[str, Any]:
        job = self.get_job(p, job_id, "train")
        if job["status"] in TERMINAL:
            raise conflict(f"The training job is already {job['status']}.")

        def mutate(j):
            if j["status"] not in TERMINAL:
                j["status"] = "cancelling"
        return public(self._update_job(p, job_id, mutate))

    def _train_job(self, p: str, job_id: str, label: str, version: str, mode: str, eval_opts: Dict[str, Any],
                   work: Dict[str, Any], who: str) -> None:
        started = now()
        outcome, record, error = "failed", None, None
        try:
            def running(j):
                if j["status"] == "notStarted":
                    j["status"] = "running"
                j["result"]["trainingStatus"] = {"percentComplete": 0, "status": "running", "startDateTime": iso(started)}
            self._update_job(p, job_id, running)
            outcome, result, model_data = self._run_worker(p, job_id, work)
            if outcome == "succeeded":
                record = self._store_trained_model(p, label, version, mode, eval_opts, work, result, model_data,
                                                   job_id, started)
                end = iso()

                def done(j):
                    j["status"] = "succeeded"
                    j["result"]["trainingStatus"] = {"percentComplete": 100, "status": "succeeded",
                                                     "startDateTime": iso(started), "endDateTime": end}
                    j["result"]["evaluationStatus"] = {"percentComplete": 100, "status": "succeeded",
                                                       "startDateTime": end, "endDateTime": end}
                self._update_job(p, job_id, done)
            elif outcome == "cancelled":
                def cancelled(j):
                    j["status"] = "cancelled"
                    j["result"]["trainingStatus"].update(status="cancelled", endDateTime=iso())
                    j["result"]["evaluationStatus"].update(status="cancelled")
                self._update_job(p, job_id, cancelled)
            else:
                error = result

                def failed(j):
                    j["status"] = "failed"
                    j["errors"] = [error]
                    j["result"]["trainingStatus"].update(status="failed", endDateTime=iso())
                    j["result"]["evaluationStatus"].update(status="failed")
                self._update_job(p, job_id, failed)
        except Exception as exc:
            log.exception("training job %s failed", job_id)
            error = {"code": "InternalServerError", "message": f"Training failed: {type(exc).__name__}"}
            outcome = "failed"
            try:
                self._finish(p, job_id, "failed", ApiError(500, error["code"], error["message"]))
            except Exception:
                log.exception("could not record the failure of job %s", job_id)
        finally:
            with self._training_lock:
                self._training -= 1
        ref = _model_ref(record) if record else {"trainedModelLabel": label}
        self._audit(p, who, "train", outcome, jobId=job_id, to=ref, error=error)
        self._touch_project(p, lastTrainedDateTime=iso()) if outcome == "succeeded" else None
        data = {"projectName": p, "modelLabel": label, "jobId": job_id, "who": who, "status": outcome,
                "trainingConfigVersion": version}
        if record:
            data.update(modelSha256=record["modelSha256"], modelVersion=record["modelVersion"],
                        modelId=record["modelId"], evaluation=record.get("evaluationFigures"))
        if error:
            data["error"] = error
        self.events.emit(f"IntentService.Training.{outcome.capitalize()}", p, f"models/{label}", data)

    def _run_worker(self, p: str, job_id: str, work: Dict[str, Any]) -> Tuple[str, Any, Optional[bytes]]:
        """Run the training child process; (outcome, result-or-error, model bytes)."""
        with tempfile.TemporaryDirectory(prefix="intent-train-") as tmp:
            tmpd = Path(tmp)
            (tmpd / "request.json").write_text(json.dumps(work, ensure_ascii=False), encoding="utf-8")
            out = tmpd / "out"
            out.mkdir()
            logf = open(tmpd / "worker.log", "wb")
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [PACKAGE_PARENT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
            proc = subprocess.Popen([sys.executable, "-m", "intent_service.authoring.worker", "train",
                                     str(tmpd / "request.json"), str(out)], stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=PACKAGE_PARENT)
            deadline = time.monotonic() + self.config.training_timeout
            next_beat = 0.0
            try:
                while proc.poll() is None:
                    time.sleep(0.2)
                    if time.monotonic() >= next_beat:
                        next_beat = time.monotonic() + 1.0
                        job, _ = self.repo.job(p, job_id)
                        if job is not None and job["status"] == "cancelling":
                            proc.kill()  # our own child, by PID
                            proc.wait()
                            return "cancelled", None, None
                        percent = 50
                        try:
                            percent = int(json.loads((out / "progress.json").read_text())["percent"])
                        except (OSError, ValueError, KeyError):
                            pass

                        def beat(j, percent=percent):
                            if j["status"] == "running":
                                j["result"]["trainingStatus"]["percentComplete"] = min(99, percent)
                        self._update_job(p, job_id, beat)
                    if time.monotonic() > deadline:
                        proc.kill()
                        proc.wait()
                        return "failed", {"code": "Timeout", "message":
                                          f"Training took longer than {self.config.training_timeout:.0f}s."}, None
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                logf.close()
            if proc.returncode != 0:
                detail = "worker exited with code %d" % proc.returncode
                try:
                    err = json.loads((out / "error.json").read_text(encoding="utf-8"))
                    detail = f"{err['errorClass']}: {err['message']}"
                    log.error("training job %s failed: %s\n%s", job_id, detail, err.get("trace", ""))
                except (OSError, ValueError, KeyError):
                    log.error("training job %s: %s; log: %s", job_id, detail,
                              (tmpd / "worker.log").read_text(errors="replace")[-2000:])
                return "failed", {"code": "InternalServerError", "message": f"Training failed: {detail[:500]}"}, None
            return ("succeeded", json.loads((out / "result.json").read_text(encoding="utf-8")),
                    (out / "model.skops").read_bytes())

    def _store_trained_model(self, p, label, version, mode, eval_opts, work, result, model_data, job_id, started):
        digest = self.repo.put_content(model_data)
        assets = work["assets"]
        intents = [i["category"] for i in assets.get("intents", [])]
        categories = [e["category"] for e in assets.get("entities", [])]
        summary = summarize(result["evaluation"], intents, categories, eval_opts)
        test_sha = pf.testset_sha256(assets)
        if work["testIndices"]:
            self.repo.put_predictions(digest, test_sha, result["frozenTest"])
        ended = now()
        trained_at = iso(ended)
        expiry = pf.TRAINING_CONFIG_EXPIRY.get(version, "2099-12-31")
        ie = summary["intentsEvaluation"]
        record = {"label": label, "modelId": f"{label}-{digest[:12]}", "lastTrainedDateTime": trained_at,
                  "lastTrainingDurationInSeconds": max(1, int(round((ended - started).total_seconds()))),
                  "modelExpirationDate": expiry, "modelTrainingConfigVersion": version, "hasSnapshot": False,
                  # extensions
                  "modelSha256": digest, "modelVersion": result["modelVersion"], "trainingMode": mode,
                  "trainingJobId": job_id, "evaluationOptions": eval_opts, "testSetSha256": test_sha,
                  "dataSha256": result.get("dataSha256"), "trainingUtterances": len(work["trainIndices"]),
                  "evaluationUtterances": len(work["evalIndices"]),
                  "evaluationFigures": {"microF1": ie["microF1"], "macroF1": ie["macroF1"]}}
        prev = self.repo.model(p, label)
        self.repo.put_model(p, label, record, {"summary": summary, "results": result["evaluation"]},
                            assets)
        if prev and prev.get("modelSha256") != digest:
            self.repo.gc_content([prev.get("modelSha256")])
        return record

    # ------------------------------------------------------------------ trained models
    def list_models(self, p: str) -> List[Dict[str, Any]]:
        self._project(p)
        return self.repo.list_models(p)

    def get_model(self, p: str, label: str) -> Dict[str, Any]:
        self._project(p)
        record = self.repo.model(p, label)
        if record is None:
            raise not_found(f"The trained model {label!r} was not found.")
        return record

    def delete_model(self, p: str, label: str, who: str) -> None:
        record = self.get_model(p, label)
        self.repo.delete_model(p, label)
        self.repo.gc_content([record.get("modelSha256")])
        self._audit(p, who, "deleteModel", "succeeded", **{"from": _model_ref(record)})

    def evaluation_summary(self, p: str, label: str) -> Dict[str, Any]:
        self.get_model(p, label)
        ev = self.repo.evaluation(p, label)
        if ev is None:
            raise not_found(f"The evaluation of {label!r} was not found.")
        return ev["summary"]

    def evaluation_results(self, p: str, label: str, string_index_type: Optional[str]) -> List[Dict[str, Any]]:
        from ..text import STRING_INDEX_TYPES

        if string_index_type not in STRING_INDEX_TYPES:
            raise bad_request(f"stringIndexType must be one of {', '.join(STRING_INDEX_TYPES)}.", "stringIndexType")
        self.get_model(p, label)
        ev = self.repo.evaluation(p, label)
        results = (ev or {}).get("results", [])
        if string_index_type == "Utf16CodeUnit":
            return results
        out = []
        for r in results:
            r = json.loads(json.dumps(r))
            for key in ("expectedEntities", "predictedEntities"):
                for e in r["entitiesResult"][key]:
                    e["offset"], e["length"] = pf.convert_span(r["text"], e["offset"], e["length"], string_index_type)
            out.append(r)
        return out

    # ------------------------------------------------------------------ deployments
    def list_deployments(self, p: str) -> List[Dict[str, Any]]:
        self._project(p)
        doc, _ = self.repo.deployments(p)
        return [_deployment_view(d) for _, d in sorted(doc["deployments"].items())]

    def get_deployment(self, p: str, d: str) -> Dict[str, Any]:
        self._project(p)
        doc, _ = self.repo.deployments(p)
        if d not in doc["deployments"]:
            raise not_found(f"The deployment {d!r} was not found.")
        return _deployment_view(doc["deployments"][d])

    def _frozen_predictions(self, p: str, assets: Dict[str, Any], digests: List[str]) -> Dict[str, List[Dict[str, Any]]]:
        """Each model's predictions on the project's Test utterances: from the store's cache (written at
        training time), else computed by an evaluation child process (and cached)."""
        test_sha = pf.testset_sha256(assets)
        out, missing = {}, []
        for dg in dict.fromkeys(digests):
            cached = self.repo.predictions(dg, test_sha)
            if cached is not None:
                out[dg] = cached
            else:
                missing.append(dg)
        if missing:
            utts = [assets["utterances"][i] for i in pf.test_indices(assets)]
            with tempfile.TemporaryDirectory(prefix="intent-gate-") as tmp:
                tmpd = Path(tmp)
                models = []
                for dg in missing:
                    data = self.repo.content(dg)
                    if data is None:
                        raise conflict(f"The model content {dg[:12]} is missing from the store.")
                    (tmpd / f"{dg}.skops").write_bytes(data)
                    models.append({"path": str(tmpd / f"{dg}.skops"), "sha256": dg})
                (tmpd / "request.json").write_text(json.dumps({"models": models, "utterances": utts},
                                                              ensure_ascii=False), encoding="utf-8")
                (tmpd / "out").mkdir()
                env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT)
                proc = subprocess.run([sys.executable, "-m", "intent_service.authoring.worker", "evaluate",
                                       str(tmpd / "request.json"), str(tmpd / "out")], env=env, cwd=PACKAGE_PARENT,
                                      capture_output=True, timeout=600)
                if proc.returncode != 0:
                    raise ApiError(500, "InternalServerError", "The promotion gate could not evaluate the models.")
                results = json.loads((tmpd / "out" / "result.json").read_text(encoding="utf-8"))["results"]
            for dg in missing:
                self.repo.put_predictions(dg, test_sha, results[dg])
                out[dg] = results[dg]
        return out

    def gate(self, p: str, candidate: Dict[str, Any], doc: Dict[str, Any]) -> Dict[str, Any]:
        """The promotion gate for putting ``candidate`` (a model reference) into production."""
        policy = self.config.gate
        prod = doc["deployments"].get(policy.production_deployment)
        assets = self.repo.assets(p) or {}
        base = {"candidate": _model_ref(candidate), "production": _model_ref(prod) if prod else None,
                "testSetSha256": pf.testset_sha256(assets)}
        if prod is None:
            return {**base, **gate_verdict([], None, policy)}
        if prod["modelSha256"] == candidate["modelSha256"]:
            return {**base, "verdict": "passed", "reasons": ["the candidate is the model in production"], "figures": {}}
        for h in doc.get("productionHistory", []):
            if h.get("modelSha256") == candidate["modelSha256"] and h.get("gate") in ("passed", "notApplicable", "rollback"):
                return {**base, "verdict": "rollback",
                        "reasons": [f"rollback to a model that served production from {h.get('since')} "
                                    f"(it passed the gate then)"], "figures": {}}
        if not pf.test_indices(assets):
            return {**base, **gate_verdict([], [], policy)}
        preds = self._frozen_predictions(p, assets, [candidate["modelSha256"], prod["modelSha256"]])
        return {**base, **gate_verdict(preds[candidate["modelSha256"]], preds[prod["modelSha256"]], policy)}

    def _refuse(self, p: str, who: str, action: str, verdict: Dict[str, Any], **fields: Any) -> ApiError:
        self._audit(p, who, action, "refused", gate=verdict, **fields)
        reasons = verdict.get("reasons", [])
        return conflict("The promotion gate refused the model for the production deployment: "
                        + "; ".join(r["message"] for r in reasons)
                        + ". Deploy with \"force\": true to override (recorded in the audit log).",
                        target=self.config.gate.production_deployment,
                        details=[{"code": r["code"], "message": r["message"], "target": r["target"]} for r in reasons],
                        innererror={"code": "PromotionGateRefused", "message": "see details",
                                    "details": {"figures": json.dumps(verdict.get("figures", {}))}})

    def deploy(self, p: str, d: str, body: Any, who: str) -> Dict[str, Any]:
        self._project(p)
        check_name(d, "deployment name", "deploymentName")
        if d == "swap":
            raise bad_request("'swap' is a reserved deployment name.", "deploymentName")
        req = parse(DeployRequest, body, "deployment request")
        record = self.repo.model(p, req.trainedModelLabel)
        if record is None:
            raise not_found(f"The trained model {req.trainedModelLabel!r} was not found.")
        doc, etag = self.repo.deployments(p)
        verdict = None
        if d == self.config.gate.production_deployment:
            if req.force:
                verdict = {"verdict": "forced", "reasons": [req.reason or "forced by the caller"]}
            else:
                verdict = self.gate(p, record, doc)
                if verdict["verdict"] == "refused":
                    raise self._refuse(p, who, "deploy", verdict, deploymentName=d,
                                       **{"from": _model_ref(doc["deployments"].get(d)), "to": _model_ref(record)})
        expected_prod = _digest(doc["deployments"].get(self.config.gate.production_deployment))
        job = self._new_job(p, "deploy", _deployment=d)
        self._spawn(self._deploy_job, p, d, job["jobId"], record, verdict, expected_prod, who, req.reason)
        return public(job)

    def _change(self, p: str, mutate: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
        """Apply ``mutate`` to the project's deployments document with If-Match (retried on a race)."""
        for _ in range(20):
            doc, etag = self.repo.deployments(p)
            mutate(doc)
            doc["revision"] = int(doc.get("revision", 0)) + 1
            try:
                new_etag = self.repo.put_deployments(p, doc, etag)
            except PreconditionFailed:
                continue
            self.registry.applied(p, doc, new_etag)
            return doc
        raise conflict("The deployments changed concurrently; retry.")

    def _deploy_job(self, p: str, d: str, job_id: str, record: Dict[str, Any], verdict: Optional[Dict[str, Any]],
                    expected_prod: Optional[str], who: str, reason: Optional[str]) -> None:
        prod_name = self.config.gate.production_deployment
        before: Dict[str, Any] = {}

        def work():
            digest = record["modelSha256"]
            self.registry.pin(digest)
            try:
                with self._deploy_lock:
                    self.registry.prepare(digest)  # load beside the old model first

                    def mutate(doc):
                        deps = doc["deployments"]
                        if verdict is not None and verdict["verdict"] != "forced" and \
                                _digest(deps.get(prod_name)) != expected_prod:
                            raise conflict("The production deployment changed while this deployment was "
                                           "being prepared; deploy again.")
                        before["from"] = deps.get(d)
                        t = iso()
                        deps[d] = {"deploymentName": d, "modelId": record["modelId"],
                                   "lastTrainedDateTime": record["lastTrainedDateTime"], "lastDeployedDateTime": t,
                                   "deploymentExpirationDate": record["modelExpirationDate"],
                                   "modelTrainingConfigVersion": record["modelTrainingConfigVersion"],
                                   "trainedModelLabel": record["label"], "modelSha256": digest,
                                   "modelVersion": record["modelVersion"]}
                        if d == prod_name:
                            _record_history(doc, deps[d], verdict, t)
                    self._change(p, mutate)
            finally:
                self.registry.unpin(digest)
            return {}

        def failed(err: ApiError) -> None:
            self._audit(p, who, "deploy", "failed", jobId=job_id, deploymentName=d, to=_model_ref(record),
                        gate=verdict, error=err.job_error())

        self._run_job(p, job_id, work, on_error=failed)
        job, _ = self.repo.job(p, job_id)
        if job and job["status"] == "succeeded":
            self._touch_project(p, lastDeployedDateTime=iso())
            frm = _model_ref(before.get("from"))
            self._audit(p, who, "deploy", "succeeded", jobId=job_id, deploymentName=d, to=_model_ref(record),
                        gate=verdict, reason=reason, forced=bool(verdict and verdict["verdict"] == "forced"),
                        **{"from": frm})
            self.events.emit("IntentService.Deployment.Deployed", p, f"deployments/{d}",
                             {"projectName": p, "deploymentName": d, "from": frm, "to": _model_ref(record),
                              "jobId": job_id, "who": who, "gate": _verdict_brief(verdict)})

    def delete_deployment(self, p: str, d: str, who: str) -> Dict[str, Any]:
        self.get_deployment(p, d)
        job = self._new_job(p, "deploy", _deployment=d)
        removed: Dict[str, Any] = {}

        def work():
            with self._deploy_lock:
                def mutate(doc):
                    if d not in doc["deployments"]:
                        raise not_found(f"The deployment {d!r} was not found.")
                    removed["d"] = doc["deployments"].pop(d)
                self._change(p, mutate)
            return {}

        def run():
            self._run_job(p, job["jobId"], work)
            if "d" in removed:
                frm = _model_ref(removed["d"])
                self._audit(p, who, "deleteDeployment", "succeeded", jobId=job["jobId"], deploymentName=d,
                            **{"from": frm})
                self.events.emit("IntentService.Deployment.Deleted", p, f"deployments/{d}",
                                 {"projectName": p, "deploymentName": d, "from": frm, "to": None,
                                  "jobId": job["jobId"], "who": who})
        self._spawn(run)
        return public(job)

    def swap(self, p: str, body: Any, who: str) -> Dict[str, Any]:
        self._project(p)
        req = parse(SwapRequest, body, "swap request")
        a, b = req.firstDeploymentName, req.secondDeploymentName
        if a == b:
            raise bad_request("firstDeploymentName and secondDeploymentName must differ.", "secondDeploymentName")
        doc, _ = self.repo.deployments(p)
        for name in (a, b):
            if name not in doc["deployments"]:
                raise not_found(f"The deployment {name!r} was not found.")
        prod_name = self.config.gate.production_deployment
        verdict = None
        if prod_name in (a, b):
            other = b if a == prod_name else a
            if req.force:
                verdict = {"verdict": "forced", "reasons": [req.reason or "forced by the caller"]}
            else:
                verdict = self.gate(p, doc["deployments"][other], doc)
                if verdict["verdict"] == "refused":
                    raise self._refuse(p, who, "swap", verdict, deploymentName=f"{a}<->{b}",
                                       **{"from": _model_ref(doc["deployments"][prod_name]),
                                          "to": _model_ref(doc["deployments"][other])})
        seen = {a: _digest(doc["deployments"][a]), b: _digest(doc["deployments"][b])}
        job = self._new_job(p, "swap")
        snapshot: Dict[str, Any] = {}

        def work():
            with self._deploy_lock:
                for name in (a, b):
                    digest = seen[name]
                    assert digest is not None  # both deployments exist (checked above) and name their model
                    self.registry.prepare(digest)

                def mutate(doc):
                    deps = doc["deployments"]
                    if a not in deps or b not in deps or _digest(deps[a]) != seen[a] or _digest(deps[b]) != seen[b]:
                        raise conflict("The deployments changed while the swap was being prepared; swap again.")
                    snapshot["before"] = {a: dict(deps[a]), b: dict(deps[b])}
                    t = iso()
                    da, db = dict(deps[b]), dict(deps[a])
                    da["deploymentName"], db["deploymentName"] = a, b
                    da["lastDeployedDateTime"] = db["lastDeployedDateTime"] = t
                    deps[a], deps[b] = da, db
                    if prod_name in (a, b):
                        _record_history(doc, deps[prod_name], verdict, t)
                self._change(p, mutate)
            return {}

        def run():
            self._run_job(p, job["jobId"], work)
            if "before" in snapshot:
                before = snapshot["before"]
                self._touch_project(p, lastDeployedDateTime=iso())
                moves = {a: {"from": _model_ref(before[a]), "to": _model_ref(before[b])},
                         b: {"from": _model_ref(before[b]), "to": _model_ref(before[a])}}
                self._audit(p, who, "swap", "succeeded", jobId=job["jobId"], deploymentName=f"{a}<->{b}",
                            gate=verdict, reason=req.reason,
                            forced=bool(verdict and verdict["verdict"] == "forced"),
                            **{"from": {a: moves[a]["from"], b: moves[b]["from"]},
                               "to": {a: moves[a]["to"], b: moves[b]["to"]}})
                self.events.emit("IntentService.Deployment.Swapped", p, f"deployments/{a}",
                                 {"projectName": p, "firstDeploymentName": a, "secondDeploymentName": b,
                                  "deployments": moves, "jobId": job["jobId"], "who": who,
                                  "gate": _verdict_brief(verdict)})
        self._spawn(run)
        return public(job)

    # ------------------------------------------------------------------ audit
    def audit(self, p: str) -> List[Dict[str, Any]]:
        check_name(p, "project name", "projectName")
        return self.repo.list_audit(p)


def _digest(d: Optional[Dict[str, Any]]) -> Optional[str]:
    return d.get("modelSha256") if d else None


def _model_ref(d: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if not d:
        return None
    return {"trainedModelLabel": d.get("trainedModelLabel") or d.get("label"), "modelId": d.get("modelId"),
            "modelSha256": d.get("modelSha256"), "modelVersion": d.get("modelVersion")}


def _verdict_brief(v: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if not v:
        return None
    return {"verdict": v["verdict"], "reasons": [r if isinstance(r, str) else r.get("message") for r in v.get("reasons", [])]}


def _record_history(doc: Dict[str, Any], entry: Dict[str, Any], verdict: Optional[Dict[str, Any]], t: str) -> None:
    hist = doc.setdefault("productionHistory", [])
    if hist and not hist[-1].get("until"):
        hist[-1]["until"] = t
    hist.append({"modelSha256": entry["modelSha256"], "trainedModelLabel": entry.get("trainedModelLabel"),
                 "since": t, "gate": (verdict or {}).get("verdict", "notApplicable")})
    del hist[:-50]


def _deployment_view(d: Dict[str, Any]) -> Dict[str, Any]:
    return dict(d)
