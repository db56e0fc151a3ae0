"""In-memory fakes of the external systems, for unit tests only.

Each fake implements its port (:mod:`shared.ports`; mypy checks it, see the assignments at the end) and passes
the same contract test as its real adapter (``tests/test_state_contract.py``, ``tests/test_adapter_contracts.py``).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.audit import AuditEntry
from shared.catalog import CatalogConflict, CatalogVersion
from shared.clients.clu import parse_clu_response
from shared.errors import PermanentError, RateLimited, TransientError
from shared.models import IntentPrediction, PoisonRecord, now_ms, poison_record_queue
from shared.ports import (AuditLog, BlobPort, CatalogStore, IntentPort, QueuedMessage, QueuePort, ReviewStore,
                          SendBirdPort, StateAdmin, StateStore)
from shared.ports import ModelVersions, PredictionCache
from shared.review import ReviewItem
from shared.state import (MAX_PATCH_OPS, StateVersion, UserState, apply_patch, deferred_version, document_patch,
                          is_sealed, merge_ops, partial_patch, version_of)

T = TypeVar("T")


class InMemoryStateStore:
    """StateStore with real optimistic concurrency: a version counter plays the ETag (``"v<n>"``). Writes are
    computed and applied as the Cosmos DB adapter does them (:func:`shared.state.document_patch` /
    :func:`shared.state.partial_patch`, else the whole document), and counted: ``reads``, ``writes``,
    ``conflicts`` (ETag mismatches), ``written_bytes`` (JSON of each patch or document written)."""

    def __init__(self, max_attempts: int = 8, seal_key: bytes = b"in-memory state store"):
        self._docs: dict[str, tuple[dict, int]] = {}
        self._lock = threading.Lock()
        self._max_attempts = max_attempts
        self._key = seal_key
        self.conflicts = 0
        self.writes = 0
        self.reads = 0
        self.written_bytes = 0
        #: Called between read and write of an update (tests use it to inject a concurrent writer).
        self.before_write: Callable[[str], None] | None = None

    def _read_doc(self, user_id: str) -> tuple[dict, int] | None:
        with self._lock:
            self.reads += 1
            found = self._docs.get(user_id)
        return (copy.deepcopy(found[0]), found[1]) if found else None

    def _read(self, user_id: str) -> tuple[UserState, int] | None:
        found = self._read_doc(user_id)
        return (UserState.model_validate(found[0]), found[1]) if found else None

    def get_or_create(self, user_id: str, channel_url: str | None) -> UserState:
        found = self._read(user_id)
        if found:
            return found[0]
        state = UserState.new(user_id, channel_url, now_ms())
        with self._lock:
            self._docs.setdefault(user_id, (state.model_dump(mode="json"), 1))
        stored = self._read(user_id)
        assert stored is not None
        return stored[0]

    def update(self, user_id: str, channel_url: str | None, mutate: Callable[[UserState], T]) -> T:
        return self.update_versioned(user_id, channel_url, mutate)[0]

    def trusts(self, version: StateVersion) -> bool:
        return is_sealed(version, self._key)

    def defer(self, base: StateVersion, mutate: Callable[[UserState], T]) -> tuple[T, StateVersion] | None:
        if not self.trusts(base):
            return None
        state = base.state()
        result = mutate(state)
        ops = partial_patch(base, state)
        if not ops or len(merge_ops(base.unwritten, ops)) > MAX_PATCH_OPS - 1:
            return None
        return result, deferred_version(base, state, ops, self._key)

    def _version(self, doc: dict, version: int, keep_turn: int | None) -> StateVersion:
        return version_of(doc, f"v{version}", keep_turn, self._key)

    def _commit(self, user_id: str, expected: int, ops: list | None, body: dict | None) -> tuple[dict, int] | None:
        """Apply ``ops`` (else store ``body``) if the stored version is still ``expected`` (0: absent)."""
        with self._lock:
            current = self._docs.get(user_id)
            if (current[1] if current else 0) != expected:
                self.conflicts += 1
                return None
            doc = apply_patch(current[0], ops) if ops and current else body
            assert doc is not None
            self._docs[user_id] = (doc, expected + 1)
            self.writes += 1
            self.written_bytes += len(json.dumps(ops if ops and current else body).encode("utf-8"))
            return copy.deepcopy(doc), expected + 1

    def update_versioned(self, user_id: str, channel_url: str | None, mutate: Callable[[UserState], T], *,
                         base: StateVersion | None = None,
                         keep_turn: int | None = None) -> tuple[T, StateVersion]:
        if base is not None and self.trusts(base):
            state = base.state()
            result = mutate(state)
            own = partial_patch(base, state)
            state.updated_at_ms = now_ms()
            ops = None if own is None or (not own and not base.unwritten) else \
                merge_ops(base.unwritten, partial_patch(base, state) or [])
            if ops and len(ops) <= MAX_PATCH_OPS:
                if self.before_write:
                    self.before_write(user_id)
                done = self._commit(user_id, int(base.etag[1:]), ops, None)
                if done:
                    return result, self._version(*done, keep_turn)
        for _ in range(self._max_attempts):
            found = self._read_doc(user_id)
            stored, version = found if found else (None, 0)
            state = UserState.model_validate(stored) if stored else UserState.new(user_id, channel_url, now_ms())
            before = state.model_dump()
            result = mutate(state)
            if stored is not None and state.model_dump() == before:
                return result, self._version(stored, version, keep_turn)
            state.updated_at_ms = now_ms()
            body = state.model_dump(mode="json")
            if self.before_write:
                self.before_write(user_id)
            done = self._commit(user_id, version, document_patch(stored, body) if stored else None, body)
            if done:
                return result, self._version(*done, keep_turn)
        raise TransientError(f"state of {user_id} kept changing: {self._max_attempts} conflicts in a row")

    # StateAdmin
    def find(self, user_id: str) -> UserState | None:
        found = self._read(user_id)
        return found[0] if found else None

    def _all(self) -> list[UserState]:
        with self._lock:
            docs = [copy.deepcopy(d) for d, _ in self._docs.values()]
        return sorted((UserState.model_validate(d) for d in docs), key=lambda s: -s.updated_at_ms)

    def find_by_channel(self, channel_url: str, limit: int = 20) -> list[UserState]:
        return [s for s in self._all() if s.channel_url == channel_url][:limit]

    def recent(self, limit: int = 20) -> list[UserState]:
        return self._all()[:limit]

    def delete(self, user_id: str) -> bool:
        with self._lock:
            return self._docs.pop(user_id, None) is not None


@dataclass
class _Stored:
    message: QueuedMessage
    visible_at_ms: int


class RecordingQueueSender:
    """The queue port in memory. ``sent[queue] -> [(text, delay_seconds)]`` records every send in order; the
    messages themselves can be peeked, received (hidden for the visibility timeout), deleted and released."""

    def __init__(self) -> None:
        self.sent: dict[str, list[tuple[str, float]]] = {}
        self.fail_with: Exception | None = None
        self._queues: dict[str, list[_Stored]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def send(self, queue: str, text: str, delay_seconds: float = 0, *, keep_forever: bool = False) -> None:
        if self.fail_with:
            raise self.fail_with
        now = now_ms()
        with self._lock:
            self.sent.setdefault(queue, []).append((text, delay_seconds))
            n = next(self._ids)
            self._queues.setdefault(queue, []).append(
                _Stored(QueuedMessage(id=f"m{n}", content=text, inserted_at_ms=now), now + int(delay_seconds * 1000)))

    def send_poison(self, record: PoisonRecord) -> None:
        self.send(poison_record_queue(record.source_queue), record.model_dump_json(), keep_forever=True)

    def peek(self, queue: str, max_messages: int = 32) -> list[QueuedMessage]:
        now = now_ms()
        with self._lock:
            return [s.message for s in self._queues.get(queue, []) if s.visible_at_ms <= now][:max_messages]

    def receive(self, queue: str, max_messages: int = 32, visibility_timeout: int = 30) -> list[QueuedMessage]:
        now, got = now_ms(), list[QueuedMessage]()
        with self._lock:
            for stored in self._queues.get(queue, []):
                if stored.visible_at_ms <= now and len(got) < max_messages:
                    m = stored.message
                    stored.message = QueuedMessage(m.id, m.content, m.inserted_at_ms, m.dequeue_count + 1,
                                                   pop_receipt=f"r{next(self._ids)}")
                    stored.visible_at_ms = now + visibility_timeout * 1000
                    got.append(stored.message)
        return got

    def delete(self, queue: str, message: QueuedMessage) -> None:
        with self._lock:
            self._queues[queue] = [s for s in self._queues.get(queue, []) if s.message.id != message.id]

    def release(self, queue: str, message: QueuedMessage) -> None:
        with self._lock:
            for stored in self._queues.get(queue, []):
                if stored.message.id == message.id:
                    stored.visible_at_ms = now_ms()

    def depth(self, queue: str) -> int:
        with self._lock:
            return len(self._queues.get(queue, []))

    def texts(self, queue: str) -> list[str]:
        return [t for t, _ in self.sent.get(queue, [])]

    def poison_records(self, queue: str) -> list[PoisonRecord]:
        return [PoisonRecord.model_validate_json(t) for t in self.texts(poison_record_queue(queue))]


class ScriptedIntentClient:
    """IntentClient answering from a dict ``utterance -> CLU prediction`` (or raising a scripted error)."""

    def __init__(self, predictions: dict[str, dict] | None = None, default: dict | None = None):
        self.predictions = predictions or {}
        self.default = default or clu_prediction("None", 0.9)
        self.calls: list[dict] = []
        self.fail_with: Exception | None = None

    def analyze(self, text: str, language: str, participant_id: str, item_id: str,
                request_id: str | None = None) -> IntentPrediction:
        self.calls.append({"text": text, "language": language, "participant_id": participant_id,
                           "item_id": item_id, "request_id": request_id})
        if self.fail_with:
            raise self.fail_with
        body = self.predictions.get(text, self.default)
        body = copy.deepcopy(body)
        body["result"]["query"] = text
        return parse_clu_response(body)


def clu_prediction(top: str, score: float, others: dict[str, float] | None = None,
                   entities: list[dict] | None = None) -> dict:
    """A CLU ``ConversationResult`` body with ``top`` at ``score`` and ``others`` below it."""
    scores = sorted({top: score, **(others or {})}.items(), key=lambda kv: -kv[1])
    intents = [{"category": c, "confidenceScore": s} for c, s in scores]
    return {"kind": "ConversationResult",
            "result": {"query": "", "prediction": {"projectKind": "Conversation", "topIntent": top,
                                                   "intents": intents, "entities": entities or []}}}


class FakeSendBird:
    """SendBirdClient that records messages, de-duplicates by (channel_url, dedup_id), and can be told to fail."""

    def __init__(self):
        self.messages: list[dict] = []
        self.attempts = 0
        self.script: list[Exception] = []

    def send_bot_message(self, channel_url: str, message: str, dedup_id: str, data: str = "") -> int:
        self.attempts += 1
        if self.script:
            raise self.script.pop(0)
        for m in self.messages:
            if m["channel_url"] == channel_url and m["dedup_id"] == dedup_id:
                return m["message_id"]
        if not message:
            raise PermanentError("SendBird rejected the message (400): message is required")
        self.messages.append({"message_id": len(self.messages) + 1, "channel_url": channel_url,
                              "message": message, "dedup_id": dedup_id, "data": data})
        return len(self.messages)


class InMemoryReviewStore:
    """ReviewStore with a version counter as the ETag (``before_write`` injects a concurrent writer)."""

    def __init__(self, max_attempts: int = 8):
        self._items: dict[str, tuple[dict, int]] = {}
        self._lock = threading.Lock()
        self._max_attempts = max_attempts
        self.before_write: Callable[[str], None] | None = None

    def _read(self, item_id: str) -> tuple[ReviewItem, int] | None:
        with self._lock:
            found = self._items.get(item_id)
        return (ReviewItem.model_validate(copy.deepcopy(found[0])), found[1]) if found else None

    def get(self, item_id: str) -> ReviewItem | None:
        found = self._read(item_id)
        return found[0] if found else None

    def update(self, item_id: str, mutate: Callable[[ReviewItem | None], ReviewItem | None]) -> ReviewItem | None:
        for _ in range(self._max_attempts):
            found = self._read(item_id)
            item, version = found if found else (None, 0)
            new = mutate(item)
            if new is None:
                return None
            if self.before_write:
                self.before_write(item_id)
            with self._lock:
                if self._items.get(item_id, (None, 0))[1] == version:
                    self._items[item_id] = (new.model_dump(mode="json"), version + 1)
                    return new
        raise TransientError(f"review item {item_id} kept changing")

    def delete(self, item_id: str) -> bool:
        with self._lock:
            return self._items.pop(item_id, None) is not None

    def _all(self) -> list[ReviewItem]:
        with self._lock:
            docs = [copy.deepcopy(d) for d, _ in self._items.values()]
        return sorted((ReviewItem.model_validate(d) for d in docs), key=lambda i: -i.last_seen_ms)

    def recent(self, status: str | None = None, limit: int = 500) -> list[ReviewItem]:
        return [i for i in self._all() if status is None or i.status == status][:limit]

    def items_of_user(self, user_key: str) -> list[ReviewItem]:
        return [i for i in self._all() if user_key in i.user_keys]

    def seen_between(self, start_ms: int, end_ms: int, status: str | None = None) -> list[ReviewItem]:
        found = [i for i in self._all() if start_ms <= i.last_seen_ms < end_ms and (status is None or i.status == status)]
        return sorted(found, key=lambda i: (i.last_seen_ms, i.id))


class InMemoryCatalogStore:
    """CatalogStore in memory (``fail_with`` makes every call raise, to test a store outage)."""

    def __init__(self) -> None:
        self._versions: dict[int, CatalogVersion] = {}
        self._current: int | None = None
        self._lock = threading.Lock()
        self.fail_with: Exception | None = None
        self.reads = 0

    def _check(self) -> None:
        if self.fail_with:
            raise self.fail_with

    def current(self) -> CatalogVersion | None:
        self._check()
        self.reads += 1
        with self._lock:
            return self._versions[self._current].model_copy(deep=True) if self._current else None

    def get(self, version: int) -> CatalogVersion | None:
        self._check()
        with self._lock:
            found = self._versions.get(version)
            return found.model_copy(deep=True) if found else None

    def history(self, limit: int = 50) -> list[CatalogVersion]:
        self._check()
        with self._lock:
            return [self._versions[v].model_copy(deep=True) for v in sorted(self._versions, reverse=True)][:limit]

    def publish(self, version: CatalogVersion) -> CatalogVersion:
        self._check()
        with self._lock:
            expected = (self._current or 0) + 1
            if version.version != expected:
                raise CatalogConflict(f"version {version.version} cannot be published: the current version is "
                                      f"{expected - 1}")
            self._versions[version.version] = version.model_copy(deep=True)
            self._current = version.version
        return version

    def force_current(self, version: CatalogVersion) -> None:
        """Store a version without any check (tests: a bad catalog written around the console)."""
        with self._lock:
            self._versions[version.version] = version
            self._current = version.version


class InMemoryAuditLog:
    """AuditLog in memory."""

    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def record(self, entry: AuditEntry) -> None:
        self.entries.append(entry)

    def recent(self, limit: int = 100, action_prefix: str | None = None) -> list[AuditEntry]:
        found = [e for e in sorted(self.entries, key=lambda e: -e.at_ms)
                 if action_prefix is None or e.action.startswith(action_prefix)]
        return found[:limit]


class InMemoryBlobs:
    """BlobPort in memory: container -> name -> bytes. Refuses what Storage refuses (container names: 3-63
    lowercase letters, digits and single hyphens; blob names: 1-1024 characters) with a ``PermanentError``;
    ``fail_with`` makes every call raise it (a Storage outage)."""

    _CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")

    def __init__(self) -> None:
        self.blobs: dict[str, dict[str, bytes]] = {}
        self.content_types: dict[tuple[str, str], str] = {}
        self.fail_with: Exception | None = None
        self.puts: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _check(self, container: str, name: str | None = None) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        if not self._CONTAINER.match(container):
            raise PermanentError(f"invalid container name {container!r}")
        if name is not None and not 1 <= len(name) <= 1024:
            raise PermanentError(f"invalid blob name of {len(name)} characters")

    def put(self, container: str, name: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._check(container, name)
        with self._lock:
            self.blobs.setdefault(container, {})[name] = bytes(data)
            self.content_types[(container, name)] = content_type
            self.puts.append((container, name))

    def get(self, container: str, name: str) -> bytes | None:
        self._check(container, name)
        with self._lock:
            return self.blobs.get(container, {}).get(name)

    def names(self, container: str, prefix: str = "") -> list[str]:
        self._check(container)
        with self._lock:
            return sorted(n for n in self.blobs.get(container, {}) if n.startswith(prefix))


class InMemoryPredictionCache:
    """:class:`~shared.ports.PredictionCache` in a dict; entries expire by ``clock`` (monotonic seconds).
    ``fail_with`` (a :class:`TransientError`) makes every call raise it, as the Redis adapter does when Redis is down."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.values: dict[str, tuple[str, float]] = {}
        self.fail_with: TransientError | None = None
        self.gets = self.sets = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            self.gets += 1
            if self.fail_with is not None:
                raise self.fail_with
            entry = self.values.get(key)
            if entry is None or entry[1] <= self.clock():
                self.values.pop(key, None)
                return None
            return entry[0]

    def set(self, key: str, value: str, ttl_seconds: int) -> None:
        with self._lock:
            self.sets += 1
            if self.fail_with is not None:
                raise self.fail_with
            self.values[key] = (value, self.clock() + max(1, int(ttl_seconds)))


class FixedModelVersions:
    """:class:`~shared.ports.ModelVersions` answering ``version`` (None: unknown) until a test or an observed answer
    changes it; ``observed`` lists what :meth:`observe` was given."""

    def __init__(self, version: str | None = "model-v1") -> None:
        self.version = version
        self.observed: list[str | None] = []

    def current(self) -> str | None:
        return self.version

    def observe(self, version: str | None) -> None:
        self.observed.append(version)
        if version:
            self.version = version


# The type checker proves each fake implements its port (mypy runs over tests/support in `make test`).
_state: StateStore = InMemoryStateStore()
_queues: QueuePort = RecordingQueueSender()
_intent: IntentPort = ScriptedIntentClient()
_sendbird: SendBirdPort = FakeSendBird()
_state_admin: StateAdmin = InMemoryStateStore()
_review: ReviewStore = InMemoryReviewStore()
_catalog: CatalogStore = InMemoryCatalogStore()
_audit: AuditLog = InMemoryAuditLog()
_prediction_cache: PredictionCache = InMemoryPredictionCache()
_versions: ModelVersions = FixedModelVersions()
_blobs: BlobPort = InMemoryBlobs()

__all__ = ["InMemoryStateStore", "RecordingQueueSender", "ScriptedIntentClient", "FakeSendBird", "clu_prediction",
           "InMemoryReviewStore", "InMemoryCatalogStore", "InMemoryAuditLog", "InMemoryBlobs",
           "RateLimited", "TransientError", "PermanentError", "Any"]
