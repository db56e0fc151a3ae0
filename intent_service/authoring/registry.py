"""The serving side: which model answers each (projectName, deploymentName), and how it changes
without interrupting predictions.

* ``resolve(project, deployment)`` is one dictionary read of an immutable mapping; predictions never
  wait for a lock.
* A change (a deploy job on this replica, or the sync loop noticing another replica's change) first
  *loads* the new model beside the old one (``prepare``: read the content-addressed blob, check its
  SHA-256, build it), then replaces the whole mapping in one assignment (``apply``), so a prediction
  sees either the old or the new model, never a gap. Models no deployment points at any more are then
  dropped. One model loads at a time per replica, so a deployment has at most two models in memory
  (the one serving and the one loading).
* The sync loop lists ``deployments/`` every ``interval`` seconds (one request; the listing carries
  each blob's ETag), reads only the documents whose ETag changed, and applies them: replicas converge
  on the same deployments within about ``interval`` + one model load, without a restart.
"""
from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .modelio import load_model_bytes
from .repository import Repository

if TYPE_CHECKING:
    from _typeshed import TraceFunction

log = logging.getLogger("intent_service.registry")


class _Throttle:
    """Makes the thread that builds a model yield the interpreter to the predictions.

    Building a model is Python code that holds the GIL for a few hundred ms; the event loop would then
    wait for it between (or in the middle of) predictions. Inside this context, a trace hook on the
    loading thread only (``sys.settrace`` is per thread; called on each Python function call, returning
    None so no line is traced) lets it run ``burst`` seconds, then sleeps ``pause`` seconds (releasing the
    GIL), so the loader gets at most about burst/(burst+pause) of the interpreter and a prediction waits
    at most about ``burst``. A load takes longer (about 1.5 s instead of 0.2 s for the retail model at
    1 ms/4 ms); predictions hardly notice it.
    """

    def __init__(self, burst: float, pause: float):
        self.burst, self.pause = burst, pause
        self._mark = 0.0
        self._previous: Optional[TraceFunction] = None

    def _hook(self, frame: FrameType, event: str, arg: Any) -> None:
        now = time.perf_counter()
        if now - self._mark > self.burst:
            time.sleep(self.pause)
            self._mark = time.perf_counter()
        return None

    def __enter__(self):
        if self.pause > 0:
            self._previous = sys.gettrace()
            self._mark = time.perf_counter()
            sys.settrace(self._hook)
        return self

    def __exit__(self, *exc):
        if self.pause > 0:
            sys.settrace(self._previous)


@dataclass(frozen=True)
class Slot:
    project: str
    deployment: str
    model: Any
    sha256: str
    label: str
    version: str


class DeploymentRegistry:
    def __init__(self, repo: Repository, interval: float = 1.0, load_burst: float = 0.001,
                 load_pause: float = 0.004):
        self.repo = repo
        self.interval = interval
        self.load_burst = load_burst
        self.load_pause = load_pause
        self._slots: Dict[Tuple[str, str], Slot] = {}
        self._models: Dict[str, Any] = {}
        self._pins: Dict[str, int] = {}
        self._etags: Dict[str, str] = {}  # deployments blob name -> etag applied
        self._load_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.synced = False
        self.last_sync: Optional[float] = None
        self.last_error: Optional[str] = None
        self.loads = 0
        self.project_errors: Dict[str, str] = {}
        self._revisions: Dict[str, int] = {}

    # ---- reading (the prediction path)
    def resolve(self, project: str, deployment: str) -> Optional[Slot]:
        return self._slots.get((project, deployment))

    def has_project(self, project: str) -> bool:
        return any(p == project for p, _ in self._slots)

    def snapshot(self) -> List[Dict[str, Any]]:
        return [{"projectName": s.project, "deploymentName": s.deployment, "trainedModelLabel": s.label,
                 "modelVersion": s.version, "modelSha256": s.sha256}
                for s in sorted(self._slots.values(), key=lambda s: (s.project, s.deployment))]

    def models_in_memory(self) -> int:
        return len(self._models)

    # ---- loading
    def pin(self, digest: str) -> None:
        with self._state_lock:
            self._pins[digest] = self._pins.get(digest, 0) + 1

    def unpin(self, digest: str) -> None:
        with self._state_lock:
            n = self._pins.get(digest, 0) - 1
            if n <= 0:
                self._pins.pop(digest, None)
            else:
                self._pins[digest] = n
        self._evict()

    def prepare(self, digest: str) -> Any:
        """The model with this content digest, loaded (and verified) if it is not in memory yet."""
        model = self._models.get(digest)
        if model is not None:
            return model
        with self._load_lock:
            model = self._models.get(digest)
            if model is not None:
                return model
            data = self.repo.content(digest)
            if data is None:
                raise LookupError(f"model content {digest} is missing from the store")
            t0 = time.perf_counter()
            with _Throttle(self.load_burst, self.load_pause):
                model = load_model_bytes(data, digest, name=f"sha256:{digest[:12]}")
            self.loads += 1
            log.info("loaded model %s (sha256 %s) in %.2fs", model.version, digest[:12], time.perf_counter() - t0)
            with self._state_lock:
                self._models[digest] = model
            return model

    def apply(self, project: str, doc: Optional[Dict[str, Any]]) -> bool:
        """Point the project's deployments at the models ``doc`` names (all loaded first). A document
        older (by ``revision``) than the one applied already is ignored, so the sync loop can never undo
        a newer change a deploy job applied meanwhile. Returns whether it was applied."""
        entries = doc.get("deployments", {}) if doc else {}
        loaded = {}
        for name, d in entries.items():
            loaded[name] = self.prepare(d["modelSha256"])
        with self._state_lock:
            if doc is not None and int(doc.get("revision", 0)) < self._revisions.get(project, -1):
                return False
            slots = {k: v for k, v in self._slots.items() if k[0] != project}
            for name, d in entries.items():
                m = loaded[name]
                slots[(project, name)] = Slot(project, name, m, d["modelSha256"], d.get("trainedModelLabel", ""),
                                              m.version)
            self._slots = slots  # one assignment: predictions see the old or the new mapping
            if doc is None:
                self._revisions.pop(project, None)
            else:
                self._revisions[project] = int(doc.get("revision", 0))
        self._evict()
        return True

    def _evict(self) -> None:
        with self._state_lock:
            used = {s.sha256 for s in self._slots.values()} | set(self._pins)
            for digest in [d for d in self._models if d not in used]:
                del self._models[digest]

    # ---- syncing
    def sync_once(self) -> None:
        """One pass: list the deployment documents, apply the changed ones. A listing failure raises; a
        project whose model does not load keeps its previous models and is retried on the next pass."""
        blobs = {b.name: b.etag for b in self.repo.list_deployment_blobs()}
        errors = {}
        for name, etag in blobs.items():
            if self._etags.get(name) == etag:
                continue
            project = name[len("deployments/"):-len(".json")]
            try:
                doc, real_etag = self.repo.get(name)
                self.apply(project, doc)
                self._etags[name] = real_etag or etag
            except Exception as exc:
                errors[project] = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.error("deployments of project %s not applied (retrying): %s", project, errors[project])
        for name in [n for n in self._etags if n not in blobs]:
            self.apply(name[len("deployments/"):-len(".json")], None)
            del self._etags[name]
        self.project_errors = errors

    def applied(self, project: str, doc: Dict[str, Any], etag: str) -> None:
        """A change this replica wrote itself: apply now (models are prepared) and remember the ETag."""
        self.apply(project, doc)
        self._etags[Repository.deployments_name(project)] = etag

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="deployment-sync", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    @staticmethod
    def warm_up() -> None:
        """Import what building a model needs (skops lists every scikit-learn estimator on import: about
        a second of CPU), before the first sync, so the first hot swap does not pay for it."""
        t0 = time.perf_counter()
        import skops.io  # noqa: F401
        import sklearn.feature_extraction.text  # noqa: F401
        import sklearn.pipeline  # noqa: F401
        import sklearn.svm  # noqa: F401
        log.info("model libraries imported in %.2fs", time.perf_counter() - t0)

    def _run(self) -> None:
        try:
            self.warm_up()
        except Exception:
            log.exception("warm-up failed")
        # Move everything imported so far (about 135k objects: scikit-learn, scipy, skops...) out of the
        # cyclic garbage collector's reach. A full collection, which the allocations of a model load
        # trigger, otherwise walks them all while holding the GIL: about 120 ms during which no
        # prediction is answered (the p99 spikes of the first hot-swap runs). Afterwards it takes < 1 ms.
        gc.collect()
        gc.freeze()
        delay = self.interval
        while not self._stop.is_set():
            try:
                self.sync_once()
                self.synced = True
                self.last_sync = time.time()
                if self.last_error:
                    log.info("deployment sync recovered")
                self.last_error = None
                delay = self.interval
            except Exception as exc:  # the store is unreachable, a model does not load: retry
                self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.error("deployment sync failed (retrying in %.1fs): %s", delay, self.last_error)
                delay = min(max(delay * 2, self.interval), 30.0)
            self._wake.wait(delay)
            self._wake.clear()
