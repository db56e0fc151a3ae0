"""Ports: the one interface of each external system the gateway's logic talks to.

Each port is a ``typing.Protocol``. The real adapter lives in ``shared/clients/`` (one module per system) and an
in-memory fake in ``tests/support/fakes.py``; both are checked against the port by the type checker (mypy, run by
``make test``) and by the same contract tests (``tests/test_adapter_contracts.py``, ``tests/test_state_contract.py``).
Domain modules (``shared/*.py``) import ports, never adapters.

=====================  ==================================  ===============================================
port                   real adapter                        fake (tests)
=====================  ==================================  ===============================================
:class:`StateStore`     ``shared.clients.cosmos``           ``InMemoryStateStore``
:class:`QueuePort`      ``shared.clients.queues``           ``RecordingQueueSender``
:class:`IntentPort`     ``shared.clients.clu``              ``ScriptedIntentClient``
:class:`SendBirdPort`   ``shared.clients.sendbird``         ``FakeSendBird``
:class:`TelemetryPort`  ``shared.clients.appinsights``      :class:`shared.telemetry.NullTelemetry` (also the
                                                            implementation when telemetry is off)
:class:`StateAdmin`     ``shared.clients.cosmos``           ``InMemoryStateStore``
:class:`ReviewStore`    ``shared.clients.cosmos_stores``    ``InMemoryReviewStore``
:class:`CatalogStore`   ``shared.clients.cosmos_stores``    ``InMemoryCatalogStore``
:class:`AuditLog`       ``shared.clients.cosmos_stores``    ``InMemoryAuditLog``
:class:`PredictionCache` ``shared.clients.prediction_cache`` ``InMemoryPredictionCache``
:class:`ModelVersions`  ``shared.clients.prediction_cache`` ``FixedModelVersions``
:class:`BlobPort`       ``shared.clients.blobs``            ``InMemoryBlobs``
=====================  ==================================  ===============================================

The last four serve the bot team's console (``console/``): the state store's administrative side (find, delete),
the review inbox, the editable response catalog and the console's audit log. :class:`BlobPort` holds the daily
review exports (:mod:`shared.review_export`), written by a timer function and read by the console.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from shared.models import IntentPrediction, PoisonRecord

if TYPE_CHECKING:  # pragma: no cover - types only
    from shared.audit import AuditEntry
    from shared.catalog import CatalogVersion
    from shared.review import ReviewItem
    from shared.state import StateVersion, UserState
    from shared.telemetry import Redactor, Span

T = TypeVar("T")


class StateStore(Protocol):
    """Where user state lives (Cosmos DB). Errors: :class:`~shared.errors.TransientError` when unavailable.

    Concurrency: :meth:`update` is an optimistic read-modify-write; ``mutate`` may run more than once (after an
    ETag conflict, HTTP 412) and must therefore be a pure function of the state it is given.
    """

    def get_or_create(self, user_id: str, channel_url: str | None) -> UserState:
        """The user's state, created (and stored) if it does not exist yet."""
        ...

    def update(self, user_id: str, channel_url: str | None, mutate: Callable[[UserState], T]) -> T:
        """Apply ``mutate`` to the current state and store it atomically (ETag); returns mutate's result.

        When it changes nothing, nothing is written. Raises :class:`~shared.errors.TransientError` after too many
        conflicts. An exception from ``mutate`` propagates and nothing is written.
        """
        ...

    def update_versioned(self, user_id: str, channel_url: str | None, mutate: Callable[[UserState], T], *,
                         base: StateVersion | None = None,
                         keep_turn: int | None = None) -> tuple[T, StateVersion]:
        """:meth:`update`, plus the document's version afterwards (written or read, sealed by this store, keeping
        the turn of ``keep_turn``), for the next stage's queue message.

        With a ``base`` this store sealed, ``mutate`` first runs on that partial copy and the change is written
        with ``If-Match: base.etag`` and no read; the usual read-modify-write follows when that fails (412: the
        document changed since), when the copy cannot express the change (turns added or removed) or when
        ``mutate`` changes nothing there (a decision not to write is always taken on a fresh read). ``mutate``
        may therefore run on the copy and then again on the stored document.
        """
        ...

    def defer(self, base: StateVersion, mutate: Callable[[UserState], T]) -> tuple[T, StateVersion] | None:
        """Apply ``mutate`` to the partial copy of ``base`` without writing anything: returns mutate's result and a
        version holding the change unwritten (written by the next :meth:`update_versioned` on it, together with
        that update's own change, in one write), or None when ``base`` is not trusted, ``mutate`` changes nothing
        or the change cannot be expressed on the copy. No I/O."""
        ...

    def trusts(self, version: StateVersion) -> bool:
        """True when this store (or one sharing its seal key) made ``version`` and nobody changed it since."""
        ...


@dataclass(frozen=True)
class QueuedMessage:
    """One message read from a queue: Storage message id, UTF-8 text content (decoded per the app's encoding),
    insertion time (epoch ms), and what deleting or releasing it needs (``pop_receipt``; empty for a peek)."""

    id: str
    content: str
    inserted_at_ms: int
    dequeue_count: int = 0
    pop_receipt: str = ""


class QueuePort(Protocol):
    """Storage queues (the app's own sends; stage-to-stage messages use output bindings).

    Errors: :class:`~shared.errors.TransientError` when Storage fails. A missing queue reads as empty.
    """

    def send(self, queue: str, text: str, delay_seconds: float = 0, *, keep_forever: bool = False) -> None:
        """Put ``text`` on ``queue`` (created if missing), invisible for ``delay_seconds`` (0..7 days)."""
        ...

    def send_poison(self, record: PoisonRecord) -> None:
        """Keep ``record`` in ``<record.source_queue>-poison-records`` (never expires)."""
        ...

    def peek(self, queue: str, max_messages: int = 32) -> list[QueuedMessage]:
        """Up to ``max_messages`` (1..32) visible messages without hiding them."""
        ...

    def receive(self, queue: str, max_messages: int = 32, visibility_timeout: int = 30) -> list[QueuedMessage]:
        """Up to ``max_messages`` (1..32) visible messages, hidden for ``visibility_timeout`` seconds."""
        ...

    def delete(self, queue: str, message: QueuedMessage) -> None:
        """Delete a received message."""
        ...

    def release(self, queue: str, message: QueuedMessage) -> None:
        """Make a received message visible again now."""
        ...

    def depth(self, queue: str) -> int:
        """Approximate number of messages in ``queue`` (0 when it does not exist)."""
        ...


class IntentPort(Protocol):
    """The intent service (Azure CLU prediction protocol, api-version 2023-04-01).

    Errors: :class:`~shared.errors.TransientError` (timeouts, 429, 5xx; :class:`~shared.errors.RateLimited`
    while the circuit is open) and :class:`~shared.errors.PermanentError` (other non-2xx answers).
    """

    def analyze(self, text: str, language: str, participant_id: str, item_id: str,
                request_id: str | None = None) -> IntentPrediction:
        """Classify one utterance (at most 1,000 characters; see :mod:`shared.utterance`)."""
        ...


class PredictionCache(Protocol):
    """A cache of intent predictions shared by every instance (Redis; :mod:`shared.intent_cache` decides what is
    stored under which key). Values are strings; keys expire after their TTL.

    Errors: :class:`~shared.errors.TransientError` for every failure (down, timeout, circuit open); callers treat
    it as a miss and never fail a message because of it.
    """

    def get(self, key: str) -> str | None:
        """The value under ``key``; None when there is none or it expired."""
        ...

    def set(self, key: str, value: str, ttl_seconds: int) -> None:
        """Store ``value`` under ``key`` for ``ttl_seconds`` (>= 1 s), replacing what was there."""
        ...


class ModelVersions(Protocol):
    """The model version the intent service currently answers the configured deployment with."""

    def current(self) -> str | None:
        """The version now (possibly a few seconds old, see the adapter); None when unknown. Never raises."""
        ...

    def observe(self, version: str | None) -> None:
        """A prediction was just answered by ``version`` (None: the answer did not say)."""
        ...


class SendBirdPort(Protocol):
    """The SendBird Platform API v3, bot messages.

    Errors: :class:`~shared.errors.RateLimited` (429 with ``X-RateLimit-RetryAfter``),
    :class:`~shared.errors.TransientError` (timeouts, 5xx), :class:`~shared.errors.PermanentError` (other non-2xx).
    """

    def send_bot_message(self, channel_url: str, message: str, dedup_id: str, data: str = "") -> int:
        """Send ``message`` to ``channel_url`` as the bot; returns SendBird's ``message_id`` (0 if not given)."""
        ...


class TelemetryPort(Protocol):
    """Application Insights (see :mod:`shared.telemetry` for what is sent and the PII rules)."""

    enabled: bool
    export_failures: int

    @property
    def redactor(self) -> Redactor:
        """The PII redaction every outbound item goes through."""
        ...

    def stage(self, name: str, traceparent: str | None, **properties: Any) -> AbstractContextManager[Span]:
        """A request (server span) for one stage invocation, continuing ``traceparent``'s trace."""
        ...

    def dependency(self, system: str, name: str, target: str,
                   dependency_type: str = "HTTP") -> AbstractContextManager[Span]:
        """A dependency (client span) of the current stage."""
        ...

    def event(self, name: str, properties: dict[str, Any] | None = None,
              measurements: dict[str, float] | None = None, traceparent: str | None = None) -> None:
        """A custom event (properties redacted per PII mode)."""
        ...

    def metric(self, name: str, value: float, **dimensions: str | None) -> None:
        """One value of a pre-aggregated metric."""
        ...

    def sensitive(self, *, user_id: str | None = None, channel_url: str | None = None,
                  text: str | None = None) -> AbstractContextManager[None]:
        """Register the raw ids and text of the message processed in this context (scrubbed everywhere)."""
        ...

    def redact_id(self, value: str) -> str:
        """A user or channel id as telemetry stores it."""
        ...

    def flush(self, timeout: float = 5.0) -> None:
        """Export everything queued now. Never raises."""
        ...

    def close(self) -> None:
        """Flush and stop. Never raises."""
        ...


class StateAdmin(Protocol):
    """The administrative side of the user state store (the console's conversations page); changes to a state go
    through :meth:`StateStore.update`. Errors: :class:`~shared.errors.TransientError` when unavailable."""

    def find(self, user_id: str) -> UserState | None:
        """The user's state, or None (never creates one)."""
        ...

    def find_by_channel(self, channel_url: str, limit: int = 20) -> list[UserState]:
        """States whose conversation is in ``channel_url`` (most recently updated first)."""
        ...

    def recent(self, limit: int = 20) -> list[UserState]:
        """The most recently updated states."""
        ...

    def delete(self, user_id: str) -> bool:
        """Delete the user's state document; False when there was none."""
        ...


class ReviewStore(Protocol):
    """The review inbox items (:mod:`shared.review`). Errors: :class:`~shared.errors.TransientError`."""

    def get(self, item_id: str) -> ReviewItem | None:
        ...

    def update(self, item_id: str, mutate: Callable[[ReviewItem | None], ReviewItem | None]) -> ReviewItem | None:
        """Optimistic read-modify-write: ``mutate`` gets the stored item (None: none yet) and returns the item to
        store, or None to leave things as they are. Returns what was stored (None when nothing was). ``mutate``
        may run more than once (after a conflict); its exceptions propagate and nothing is written."""
        ...

    def delete(self, item_id: str) -> bool:
        """Delete an item; False when there was none."""
        ...

    def recent(self, status: str | None = None, limit: int = 500) -> list[ReviewItem]:
        """Items (of ``status``, default all), most recently seen first."""
        ...

    def items_of_user(self, user_key: str) -> list[ReviewItem]:
        """Items a user (as stored: ``Redactor.id``) contributed to."""
        ...

    def seen_between(self, start_ms: int, end_ms: int, status: str | None = None) -> list[ReviewItem]:
        """Every item (of ``status``, default all) whose ``last_seen_ms`` is in ``[start_ms, end_ms)`` (epoch ms),
        oldest first (ties by id); unbounded in number (the daily export reads one UTC day)."""
        ...


class CatalogStore(Protocol):
    """Published versions of the response catalog (:mod:`shared.catalog`). Errors: ``TransientError``."""

    def current(self) -> CatalogVersion | None:
        """The current version (one point read), or None when nothing was published (the shipped file rules)."""
        ...

    def get(self, version: int) -> CatalogVersion | None:
        ...

    def history(self, limit: int = 50) -> list[CatalogVersion]:
        """Published versions, newest first."""
        ...

    def publish(self, version: CatalogVersion) -> CatalogVersion:
        """Make ``version`` current. Its number must be the current one + 1 (1 for the first); otherwise someone
        published meanwhile: :class:`~shared.catalog.CatalogConflict`."""
        ...


class AuditLog(Protocol):
    """The console's audit log (:mod:`shared.audit`). Errors: ``TransientError``."""

    def record(self, entry: AuditEntry) -> None:
        ...

    def recent(self, limit: int = 100, action_prefix: str | None = None) -> list[AuditEntry]:
        """Newest first; only actions starting with ``action_prefix`` when given."""
        ...


class BlobPort(Protocol):
    """Blob Storage (block blobs in containers), for files the bot team downloads: the daily review exports.

    Errors: :class:`~shared.errors.TransientError` when Storage fails or refuses for a passing reason (5xx, 408,
    429, timeouts); :class:`~shared.errors.PermanentError` for the rest (authentication, an invalid name).
    """

    def put(self, container: str, name: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write ``data`` as blob ``name`` of ``container``, replacing what was there (the container is created
        when missing)."""
        ...

    def get(self, container: str, name: str) -> bytes | None:
        """The blob's content, or None when the blob (or the container) does not exist."""
        ...

    def names(self, container: str, prefix: str = "") -> list[str]:
        """Names of the blobs in ``container`` that start with ``prefix``, sorted; empty when the container does
        not exist."""
        ...


__all__ = ["ModelVersions", "PredictionCache", "AuditLog", "BlobPort", "CatalogStore", "IntentPort", "QueuePort", "QueuedMessage", "ReviewStore", "SendBirdPort",
           "StateAdmin", "StateStore", "TelemetryPort"]
