"""Composition root: every client is built once per worker from the validated settings, here and only here.

:func:`build` turns an :class:`~shared.settings.AppConfig` into :class:`Services` (the real adapters behind their
ports, :mod:`shared.ports`); :func:`root` builds it once per worker process on first use (thread-safe), so TCP/TLS
connections are reused across invocations. Each stage takes what it needs from it explicitly
(:meth:`Services.intent_stage`, :meth:`Services.branch`, :meth:`Services.reply_sender`, ...): nothing else in the
app reads a global. Tests build the same :class:`Services` with fakes in one line (``tests/support``) and
:func:`install` it for the trigger functions.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from shared.branch_handlers import BranchDeps
from shared.catalog import ResponseCatalog
from shared.dead_letters import DeadLetterDeps
from shared.intent_stage import IntentStageDeps
from shared.ports import IntentPort, QueuePort, SendBirdPort, StateStore, TelemetryPort
from shared.processing import RetryPolicy
from shared.reply_sender import ReplyDeps
from shared.settings import AppConfig, Settings, get_config
from shared.telemetry import from_settings


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

    def dead_letters(self) -> DeadLetterDeps:
        return DeadLetterDeps(self.queues, self.state_store, self.catalog, self.settings,
                              self.config.host.max_dequeue_count, self.telemetry)


def build(config: AppConfig) -> Services:
    """The real adapters for ``config`` (Storage queues, Cosmos DB, the intent service, SendBird, Application
    Insights or no telemetry). Raises what the SDKs raise when a client cannot be created."""
    from shared.clients.clu import IntentClient
    from shared.clients.cosmos import CosmosStateStore, connect
    from shared.clients.queues import QueueSender
    from shared.clients.sendbird import SendBirdClient

    s = config.settings
    telemetry = from_settings(s)
    return Services(
        config=config,
        queues=QueueSender(s.azure_webjobs_storage, config.host.message_encoding,
                           account_name=s.storage_account_name, client_id=s.storage_client_id),
        state_store=CosmosStateStore(connect(s), telemetry=telemetry),
        intent=IntentClient(s, telemetry),
        sendbird=SendBirdClient(s, telemetry),
        catalog=ResponseCatalog.load(),
        telemetry=telemetry,
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
