"""Model lifecycle through Azure CLU's authoring protocol (api-version 2023-04-01): projects,
import/export, training jobs with evaluation, trained models, deployments with a promotion gate and
zero-downtime hot swap, an audit log and CloudEvents announcements. Everything is kept in Blob Storage
(``storage.py``), so several replicas serve the same deployments.

``Authoring.from_env()`` returns None when no project store is configured; ``app.create_app`` then
serves its single model as before.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional, Tuple

from .api import Authenticator, build_routes
from .config import AuthoringConfig, ConfigError
from .events import EventSink
from .registry import DeploymentRegistry
from .repository import Repository
from .service import AuthoringService
from .storage import AzureBlobStore, BlobStore, MemoryBlobStore

log = logging.getLogger("intent_service.authoring")

__all__ = ["Authoring", "AuthoringConfig", "ConfigError", "open_store"]


def open_store(config: AuthoringConfig) -> BlobStore:
    if config.connection_string:
        return AzureBlobStore.from_connection_string(config.connection_string, config.container, config.prefix)
    if config.account_url:
        return AzureBlobStore.from_account_url(config.account_url, config.container, config.prefix,
                                               client_id=config.client_id)
    return MemoryBlobStore()


class Authoring:
    """What ``app.create_app`` mounts: the authoring routes, the deployment registry that answers
    predictions, and the background threads (deployment sync, event delivery)."""

    def __init__(self, config: AuthoringConfig, store: Optional[BlobStore] = None):
        self.config = config
        self.store = store or open_store(config)
        self.repo = Repository(self.store)
        self.registry = DeploymentRegistry(self.repo, interval=config.sync_interval,
                                           load_burst=config.load_burst, load_pause=config.load_pause)
        self.events = EventSink(config.events_url, config.events_secret, config.events_source,
                                max_attempts=config.events_max_attempts, backoff=config.events_backoff)
        self.service = AuthoringService(config, self.repo, self.registry, self.events)
        self.auth = Authenticator(config.authoring_keys, config.trust_easy_auth, config.allowed_principals)
        self.routes = build_routes(self.service, self.auth)
        self._prediction_keys = [k.encode("utf-8") for k in config.authoring_keys.values()]

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> Optional["Authoring"]:
        config = AuthoringConfig.from_env(env)
        return cls(config) if config is not None else None

    def start(self) -> None:
        if not self.auth.configured:
            log.warning("authoring is enabled but no authoring key (INTENT_AUTHORING_KEYS) or principal is "
                        "configured: every authoring call is refused (401)")
        log.info("project store: %s; deployments sync every %.1fs", self.store.describe(), self.config.sync_interval)
        self.registry.start()
        self.events.start()

    def stop(self) -> None:
        self.registry.stop()
        self.events.stop()

    # ---- the prediction path
    @property
    def ready(self) -> bool:
        return self.registry.synced

    def is_authoring_key(self, given: bytes) -> bool:
        import hmac

        ok = False
        for key in self._prediction_keys:
            ok |= hmac.compare_digest(given, key)
        return ok

    def resolve(self, params: Any) -> Tuple[Any, Optional[Tuple[int, Dict[str, Any]]]]:
        """(model, None) or (None, (status, CLU error body)) for a request's ``parameters``."""
        params = params if isinstance(params, dict) else {}
        project, deployment = params.get("projectName"), params.get("deploymentName")
        for key, value in (("projectName", project), ("deploymentName", deployment)):
            if not isinstance(value, str) or not value:
                return None, (400, {"error": {"code": "InvalidArgument",
                                              "message": f"'parameters.{key}' is required and must be a string."}})
        slot = self.registry.resolve(project, deployment)
        if slot is None:
            what = (f"The deployment {deployment!r} of project {project!r} was not found."
                    if self.registry.has_project(project) else f"The project {project!r} was not found.")
            return None, (404, {"error": {"code": "NotFound", "message": what,
                                          "innererror": {"code": "DeploymentNotFound"
                                                         if self.registry.has_project(project)
                                                         else "ProjectNotFound", "message": what}}})
        return slot.model, None

    def info(self) -> Dict[str, Any]:
        return {"mode": "projects", "store": "blob" if self.config.store == "blob" else "memory",
                "deployments": self.registry.snapshot(), "modelsInMemory": self.registry.models_in_memory(),
                "synced": self.registry.synced, "lastSync": self.registry.last_sync,
                "syncError": self.registry.last_error, "projectErrors": self.registry.project_errors,
                "productionDeployment": self.config.gate.production_deployment}
