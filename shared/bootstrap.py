"""Composition root: every client is built once per worker from the validated settings, here and only here.

:func:`build` turns an :class:`~shared.settings.AppConfig` into :class:`Services` (the real adapters behind their
ports, :mod:`shared.ports`); :func:`root` builds it once per worker process on first use (thread-safe), so TCP/TLS
connections are reused across invocations. Each stage takes what it needs from it explicitly
(:meth:`Services.intent_stage`, :meth:`Services.branch`, :meth:`Services.reply_sender`, ...): nothing else in the
app reads a global. Tests build the same :class:`Services` with fakes in one line (``tests/support``) and
:func:`install` it for the trigger functions.

The bot team's console (``console/``) builds its gateway-side clients here too (:func:`build_admin`): the same
adapters on the same settings, so the console and the functions always agree on where things are.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from shared.branch_handlers import BranchDeps
from shared.catalog import LiveCatalog, ResponseCatalog
from shared.conversations import ConversationDeps
from shared.dead_letters import DeadLetterDeps
from shared.intent_stage import IntentStageDeps
from shared.ports import (AuditLog, BlobPort, CatalogStore, IntentPort, QueuePort, ReviewStore, SendBirdPort,
                          StateAdmin, StateStore, TelemetryPort)
from shared.processing import RetryPolicy
from shared.reply_sender import ReplyDeps
from shared.review import ReviewDeps
from shared.review_export import ExportDeps
from shared.settings import AppConfig, Settings, get_config
from shared.telemetry import Redactor, from_settings


@dataclass(frozen=True)
class Services:
    """The worker's clients, one per external system, plus the response catalog."""

    config: AppConfig
    queues: QueuePort
    state_store: StateStore
    intent: IntentPort
    sendbird: SendBirdPort
    catalog: ResponseCatalog
    telemetry: TelemetryPort
    review_store: ReviewStore
    blobs: BlobPort

    @property
    def settings(self) -> Settings:
        return self.config.settings

    def retry_policy(self) -> RetryPolicy:
        """The retry/poison policy of every queue stage (host.json's ``maxDequeueCount`` and its override)."""
        return RetryPolicy(queues=self.queues, max_dequeue_count=self.config.host.max_dequeue_count,
                           retry_budget_seconds=self.settings.retry_budget_seconds, telemetry=self.telemetry)

    def intent_stage(self) -> IntentStageDeps:
        return IntentStageDeps(self.state_store, self.intent, self.settings, self.telemetry)

    def branch(self) -> BranchDeps:
        return BranchDeps(self.state_store, self.queues, self.catalog, self.settings, self.telemetry)

    def reply_sender(self) -> ReplyDeps:
        return ReplyDeps(self.sendbird, self.queues, self.state_store, self.settings, self.catalog, self.telemetry)

    def review(self) -> ReviewDeps:
        return ReviewDeps(self.review_store, self.telemetry.redactor, self.settings.telemetry_pii_hash_key)

    def review_export(self) -> ExportDeps:
        s = self.settings
        return ExportDeps(self.review_store, self.blobs, self.telemetry.redactor, s.review_export_container,
                          s.review_export_catch_up_days, s.review_export_include_today)

    def dead_letters(self) -> DeadLetterDeps:
        return DeadLetterDeps(self.queues, self.state_store, self.catalog, self.settings,
                              self.config.host.max_dequeue_count, self.telemetry)


def build(config: AppConfig) -> Services:
    """The real adapters for ``config`` (Storage queues, Cosmos DB, the intent service, SendBird, Application
    Insights or no telemetry). Raises what the SDKs raise when a client cannot be created."""
    from shared.clients.cosmos import CosmosStateStore, lazy_containers
    from shared.clients.cosmos_stores import CosmosCatalogStore, CosmosReviewStore
    from shared.clients.queues import QueueSender
    from shared.clients.sendbird import SendBirdClient
    from shared.state import seal_key

    s = config.settings
    telemetry = from_settings(s)
    container = lazy_containers(s)  # no I/O here: the webhook intake never waits for Cosmos DB
    return Services(
        config=config,
        queues=QueueSender(s.azure_webjobs_storage, config.host.message_encoding,
                           account_name=s.storage_account_name, client_id=s.storage_client_id),
        # the key sealing state versions is derived from the SendBird token: every instance and worker process of
        # the app trusts the versions the others hand on (shared/state.py StateVersion)
        state_store=CosmosStateStore(container(s.cosmos_state_container, "/user_id"), telemetry=telemetry,
                                     seal_key=seal_key(s.sendbird_api_token)),
        intent=intent_port(s, telemetry),
        sendbird=SendBirdClient(s, telemetry),
        catalog=live_catalog(CosmosCatalogStore(container(s.cosmos_catalog_container, "/id")), s),
        telemetry=telemetry,
        review_store=CosmosReviewStore(container(s.cosmos_review_container, "/id")),
        blobs=blob_store(s),
    )


def blob_store(s: Settings) -> BlobPort:
    """Blob Storage on the ``AzureWebJobsStorage`` account (connection string, or the identity-based form); the
    SDK client does no I/O until the first call."""
    from shared.clients.blobs import BlobStore
    return BlobStore(s.azure_webjobs_storage, account_name=s.storage_account_name, client_id=s.storage_client_id)


def intent_port(settings: Settings, telemetry: TelemetryPort) -> IntentPort:
    """The intent client, wrapped in the shared prediction cache when ``INTENT_CACHE_URL`` is set
    (:mod:`shared.intent_cache`; Redis adapter and model-version probe: :mod:`shared.clients.prediction_cache`).
    No I/O here: Redis and the intent service are first called by the first message."""
    from shared.clients.clu import IntentClient

    client = IntentClient(settings, telemetry)
    if not settings.intent_cache_url:
        return client
    from shared.clients.prediction_cache import DeploymentVersionProbe, build_cache
    from shared.intent_cache import CachedIntent

    return CachedIntent(client, build_cache(settings, telemetry), DeploymentVersionProbe(settings), settings,
                        telemetry)


def live_catalog(store: CatalogStore, settings: Settings) -> ResponseCatalog:
    """The catalog the stages answer with: the published versions in ``store`` (looked up every
    ``CATALOG_REFRESH_SECONDS``), or only the shipped file when that is 0."""
    shipped = ResponseCatalog.load()
    return LiveCatalog(shipped, store, settings.catalog_refresh_seconds) if settings.catalog_refresh_seconds else shipped


@dataclass(frozen=True)
class AdminServices:
    """The gateway-side clients of the bot team's console: queues (poison messages, depths), the state store
    (both sides), the review inbox, the response catalog versions, the console's audit log and the blobs of the
    daily review exports."""

    config: AppConfig
    queues: QueuePort
    state_store: StateStore
    state_admin: StateAdmin
    review_store: ReviewStore
    catalog_store: CatalogStore
    audit: AuditLog
    blobs: BlobPort

    @property
    def settings(self) -> Settings:
        return self.config.settings

    @property
    def redactor(self) -> Redactor:
        return Redactor(self.settings.telemetry_pii_mode, self.settings.telemetry_pii_hash_key)

    def conversations(self) -> ConversationDeps:
        return ConversationDeps(self.state_store, self.state_admin, self.review_store, self.redactor,
                                self.settings.telemetry_pii_hash_key)


def build_admin(config: AppConfig, audit_container: str) -> AdminServices:
    """The real adapters for the console, on the gateway's settings (``config``) plus the audit log's container."""
    from shared.clients.cosmos import CosmosStateStore, lazy_containers
    from shared.clients.cosmos_stores import CosmosAuditLog, CosmosCatalogStore, CosmosReviewStore
    from shared.clients.queues import QueueSender

    s = config.settings
    container = lazy_containers(s)  # the operations pages (poison messages, queues) work while Cosmos DB is down
    state = CosmosStateStore(container(s.cosmos_state_container, "/user_id"))
    return AdminServices(
        config=config,
        queues=QueueSender(s.azure_webjobs_storage, config.host.message_encoding,
                           account_name=s.storage_account_name, client_id=s.storage_client_id),
        state_store=state, state_admin=state,
        review_store=CosmosReviewStore(container(s.cosmos_review_container, "/id")),
        catalog_store=CosmosCatalogStore(container(s.cosmos_catalog_container, "/id")),
        audit=CosmosAuditLog(container(audit_container, "/id")),
        blobs=blob_store(s),
    )


_lock = threading.Lock()
_root: Services | None = None


def root() -> Services:
    """This worker's :class:`Services`, built from :func:`~shared.settings.get_config` on first use."""
    global _root
    if _root is None:
        with _lock:
            if _root is None:
                _root = build(get_config())
    return _root


def install(services: Services | None) -> None:
    """Make ``services`` this worker's root (tests); None: build the real one on next use."""
    global _root
    with _lock:
        _root = services
