"""Where the authoring service keeps things in the blob store (names below the store's prefix,
``clu/`` by default, in the ``models`` container):

=========================================================  ==============================================
``projects/{p}/project.json``                              project metadata (CLU's project object)
``projects/{p}/assets.json``                               the project's assets (intents, entities, utterances)
``projects/{p}/models/{label}/model.json``                 a trained model's record (label, modelId, sha256...)
``projects/{p}/models/{label}/evaluation.json``            its evaluation: summary-result + per-utterance results
``projects/{p}/models/{label}/assets.json``                the assets it was trained on (``:export`` of a model)
``projects/{p}/exports/{jobId}.json``                      an export job's project file
``deployments/{p}.json``                                   ALL deployments of a project, one blob: a deploy,
                                                           delete or swap is one conditional (If-Match) write,
                                                           so a swap is atomic and replicas see both sides at once
``content/sha256/{digest}.skops``                          model files, content-addressed (name = SHA-256)
``predictions/{digest}/{testSha256}.json``                 a model's predictions on a frozen Test set (gate cache)
``jobs/{p}/{jobId}.json``, ``jobs/_global/{jobId}.json``   long-running operations (project deletions: _global)
``audit/{p}/{time}-{id}.json``                             the audit log, one blob per entry (append-only)
=========================================================  ==============================================
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import uuid
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .storage import BlobInfo, BlobStore, PreconditionFailed, StoreError

GLOBAL = "_global"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _loads(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


class Repository:
    def __init__(self, store: BlobStore):
        self.store = store

    # ---- generic JSON documents
    def get(self, name: str) -> Tuple[Optional[Any], Optional[str]]:
        blob = self.store.read(name)
        if blob is None:
            return None, None
        return _loads(blob.data), blob.etag

    def put(self, name: str, obj: Any, *, if_match: Optional[str] = None, if_none_match: bool = False) -> str:
        return self.store.write(name, _dumps(obj), if_match=if_match, if_none_match=if_none_match)

    def delete_prefix(self, prefix: str) -> int:
        n = 0
        for b in self.store.list(prefix):
            n += int(self.store.delete(b.name))
        return n

    # ---- projects
    @staticmethod
    def project_name(p: str) -> str:
        return f"projects/{p}/project.json"

    def project(self, p: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
        return self.get(self.project_name(p))

    def put_project(self, p: str, meta: Dict[str, Any], **cond: Any) -> str:
        return self.put(self.project_name(p), meta, **cond)

    def list_projects(self) -> List[Dict[str, Any]]:
        out = []
        for b in self.store.list("projects/"):
            parts = b.name.split("/")
            if len(parts) == 3 and parts[2] == "project.json":
                doc, _ = self.get(b.name)
                if doc is not None:
                    out.append(doc)
        return sorted(out, key=lambda m: m["projectName"])

    def assets(self, p: str) -> Optional[Dict[str, Any]]:
        return self.get(f"projects/{p}/assets.json")[0]

    def put_assets(self, p: str, assets: Dict[str, Any]) -> str:
        return self.put(f"projects/{p}/assets.json", assets)

    # ---- trained models
    def model(self, p: str, label: str) -> Optional[Dict[str, Any]]:
        return self.get(f"projects/{p}/models/{label}/model.json")[0]

    def put_model(self, p: str, label: str, record: Dict[str, Any], evaluation: Dict[str, Any],
                  assets: Dict[str, Any]) -> None:
        self.put(f"projects/{p}/models/{label}/evaluation.json", evaluation)
        self.put(f"projects/{p}/models/{label}/assets.json", assets)
        self.put(f"projects/{p}/models/{label}/model.json", record)  # last: the record makes it visible

    def list_models(self, p: str) -> List[Dict[str, Any]]:
        out = []
        for b in self.store.list(f"projects/{p}/models/"):
            if b.name.endswith("/model.json"):
                doc, _ = self.get(b.name)
                if doc is not None:
                    out.append(doc)
        return sorted(out, key=lambda m: m["label"])

    def evaluation(self, p: str, label: str) -> Optional[Dict[str, Any]]:
        return self.get(f"projects/{p}/models/{label}/evaluation.json")[0]

    def model_assets(self, p: str, label: str) -> Optional[Dict[str, Any]]:
        return self.get(f"projects/{p}/models/{label}/assets.json")[0]

    def delete_model(self, p: str, label: str) -> bool:
        existed = self.store.delete(f"projects/{p}/models/{label}/model.json")
        self.delete_prefix(f"projects/{p}/models/{label}/")
        return existed

    # ---- model content (content-addressed)
    @staticmethod
    def content_name(digest: str) -> str:
        return f"content/sha256/{digest}.skops"

    def put_content(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        try:
            self.store.write(self.content_name(digest), data, if_none_match=True)
        except PreconditionFailed:
            pass  # same name = same bytes
        return digest

    def content(self, digest: str) -> Optional[bytes]:
        blob = self.store.read(self.content_name(digest))
        return None if blob is None else blob.data

    def content_references(self) -> set:
        refs = set()
        for b in self.store.list("projects/"):
            if b.name.endswith("/model.json"):
                doc, _ = self.get(b.name)
                if doc:
                    refs.add(doc.get("modelSha256"))
        for b in self.store.list("deployments/"):
            doc, _ = self.get(b.name)
            for d in (doc or {}).get("deployments", {}).values():
                refs.add(d.get("modelSha256"))
        return refs

    def gc_content(self, digests: Iterable[Optional[str]]) -> List[str]:
        """Delete the given content blobs unless a model record or a deployment still names them."""
        wanted = {d for d in digests if d}
        if not wanted:
            return []
        refs = self.content_references()
        gone = []
        for d in sorted(wanted - refs):
            if self.store.delete(self.content_name(d)):
                gone.append(d)
            self.delete_prefix(f"predictions/{d}/")
        return gone

    # ---- frozen-Test predictions (gate cache)
    def predictions(self, digest: str, test_sha: str) -> Optional[List[Dict[str, Any]]]:
        return self.get(f"predictions/{digest}/{test_sha}.json")[0]

    def put_predictions(self, digest: str, test_sha: str, results: List[Dict[str, Any]]) -> None:
        self.put(f"predictions/{digest}/{test_sha}.json", results)

    # ---- deployments: one document per project
    @staticmethod
    def deployments_name(p: str) -> str:
        return f"deployments/{p}.json"

    def deployments(self, p: str) -> Tuple[Dict[str, Any], Optional[str]]:
        doc, etag = self.get(self.deployments_name(p))
        return (doc or {"projectName": p, "deployments": {}, "productionHistory": []}), etag

    def put_deployments(self, p: str, doc: Dict[str, Any], etag: Optional[str]) -> str:
        if etag is None:
            return self.put(self.deployments_name(p), doc, if_none_match=True)
        return self.put(self.deployments_name(p), doc, if_match=etag)

    def list_deployment_blobs(self) -> List[BlobInfo]:
        return [b for b in self.store.list("deployments/") if b.name.endswith(".json")]

    # ---- jobs
    @staticmethod
    def job_name(p: Optional[str], job_id: str) -> str:
        return f"jobs/{p or GLOBAL}/{job_id}.json"

    def job(self, p: Optional[str], job_id: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
        return self.get(self.job_name(p, job_id))

    def put_job(self, p: Optional[str], job: Dict[str, Any], etag: Optional[str] = None,
                create: bool = False) -> str:
        if create:
            return self.put(self.job_name(p, job["jobId"]), job, if_none_match=True)
        return self.put(self.job_name(p, job["jobId"]), job, if_match=etag)

    def list_jobs(self, p: str) -> List[Dict[str, Any]]:
        out = []
        for b in self.store.list(f"jobs/{p}/"):
            doc, _ = self.get(b.name)
            if doc is not None:
                out.append(doc)
        return sorted(out, key=lambda j: j["createdDateTime"])

    # ---- exports
    def put_export(self, p: str, job_id: str, project: Dict[str, Any]) -> None:
        self.put(f"projects/{p}/exports/{job_id}.json", project)

    def export(self, p: str, job_id: str) -> Optional[Dict[str, Any]]:
        return self.get(f"projects/{p}/exports/{job_id}.json")[0]

    # ---- audit
    def append_audit(self, p: str, entry: Dict[str, Any]) -> None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        entry.setdefault("id", str(uuid.uuid4()))
        self.put(f"audit/{p}/{stamp}-{entry['id']}.json", entry, if_none_match=True)

    def list_audit(self, p: str) -> List[Dict[str, Any]]:
        out = []
        for b in self.store.list(f"audit/{p}/"):
            doc, _ = self.get(b.name)
            if doc is not None:
                out.append(doc)
        return out


__all__ = ["Repository", "StoreError", "PreconditionFailed", "GLOBAL"]
