"""List poison messages with their reasons, and replay selected ones after a fix.

Two queues per stage queue hold them:

- ``<queue>-poison-records``: :class:`~shared.models.PoisonRecord` s (``recorded_by="app"``) with the reason,
  error type, dequeue count, correlation id, SendBird ``message_id`` and the original body, written by the
  stage's poison policy, or by the poison trigger for a message the host moved (:mod:`shared.dead_letters`);
- ``<queue>-poison``: the host's poison queue; a raw body is there only until the poison trigger turns it into
  a record (``recorded_by="host"``, reason unknown yet).

The listing shows one entry per poisoned delivery (a record written twice by a retried poison trigger is shown
once) and, in PII mode ``mask``/``strict``, the original bodies with user and channel ids hashed and the text
masked or dropped. Replaying puts the original body back on its source queue and deletes the poison
message; messages poisoned after the replay started are left alone (a replayed message that fails again
during the scan is not replayed twice). Replies already sent are not sent again: the reply sender's sent records
(``sent_dedup_ids`` of the user's turn) make a replayed message's reply a no-op
when it was delivered, and a message that only got an apology gets its real answer.

Used by the operations HTTP functions (``functions/ops.py``) and ``python -m tools.poison``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from azure.core.exceptions import ResourceNotFoundError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.clients.queues import QueueSender
from shared.models import INBOUND_QUEUE, REPLY_QUEUE, PoisonRecord, Route, now_ms, poison_queue_name, poison_record_queue
from shared.telemetry import Redactor

#: Every queue a stage consumes, hence every poison queue there can be.
SOURCE_QUEUES: tuple[str, ...] = (INBOUND_QUEUE, *(r.queue for r in Route), REPLY_QUEUE)
#: Storage queues return at most 32 messages per receive/peek call.
PAGE = 32
#: How long messages taken from a poison queue stay hidden while a replay looks at them, seconds.
REPLAY_LEASE_SECONDS = 30


@dataclass(frozen=True)
class PoisonEntry:
    """One poison message. ``id`` is the Storage message id (what ``replay(ids=...)`` selects)."""

    id: str
    source_queue: str
    recorded_by: str
    reason: str
    error_type: str | None
    dequeue_count: int | None
    correlation_id: str | None
    message_id: int | None
    poisoned_at_ms: int | None
    original: str

    def to_dict(self, redactor: Redactor | None = None) -> dict:
        """The entry as JSON-ready data; with a ``redactor`` in mask/strict mode, ``original`` is redacted."""
        data = asdict(self)
        if redactor is not None and redactor.mode != "off":
            data["original"] = redact_body(self.original, redactor)
        return data

    def key(self) -> tuple:
        """What identifies one poisoned delivery (the same record written twice has the same key)."""
        return (self.source_queue, self.correlation_id, self.message_id, self.original)


def redact_body(original: str, redactor: Redactor) -> str:
    """A queue message body with its ids hashed and texts masked/dropped (unreadable bodies: scrubbed)."""
    try:
        data = json.loads(original)
    except (ValueError, RecursionError):
        return redactor.scrub(original)
    if not isinstance(data, dict):
        return redactor.scrub(original)
    cleaned = redactor.properties({k: v for k, v in data.items() if isinstance(v, str)})
    return json.dumps({**data, **{k: v for k, v in cleaned.items()}}, ensure_ascii=False)


def parse_entry(source_queue: str, storage_id: str, content: str) -> PoisonEntry:
    """Read one poison message body (a PoisonRecord, or a raw original moved by the host)."""
    try:
        r = PoisonRecord.model_validate_json(content)
        return PoisonEntry(storage_id, source_queue, "app", r.reason, r.error_type, r.dequeue_count,
                           r.correlation_id, r.message_id, r.poisoned_at_ms, r.original)
    except ValidationError:
        pass
    correlation_id = message_id = None
    try:
        data = json.loads(content)
        if isinstance(data, dict):
            correlation_id, message_id = data.get("correlation_id"), data.get("message_id")
    except (ValueError, RecursionError):
        pass
    return PoisonEntry(storage_id, source_queue, "host",
                       "moved by the Functions host after maxDequeueCount (worker died or timed out; no reason "
                       "recorded)", None, None, correlation_id, message_id, None, content)


def mark_replayed(original: str) -> str:
    """The original body with ``replayed: true`` when it is one of our queue messages (else unchanged),
    so the stages may answer a message that already got an apology."""
    try:
        data = json.loads(original)
    except (ValueError, RecursionError):
        return original
    if isinstance(data, dict) and data.get("type") in ("inbound", "routed", "reply"):
        data["replayed"] = True
        return json.dumps(data, ensure_ascii=False)
    return original


def list_poison(queues: QueueSender, source_queues: tuple[str, ...] = SOURCE_QUEUES) -> list[PoisonEntry]:
    """Poison messages of ``source_queues``: records, then raw bodies the poison trigger has not handled yet
    (up to 32 of each per queue: Storage's peek limit), oldest first, one entry per poisoned delivery."""
    entries: dict[tuple, PoisonEntry] = {}
    for q in source_queues:
        for name in (poison_record_queue(q), poison_queue_name(q)):
            for m in queues.peek(name, max_messages=PAGE):
                entry = parse_entry(q, m.id, m.content)
                entries.setdefault(entry.key(), entry)
    return list(entries.values())


class ReplayRequest(BaseModel):
    """Which poison messages to replay. At least one selector, or ``all``."""

    model_config = ConfigDict(extra="forbid")
    queues: list[str] = Field(default_factory=list, description="source queues to look in (default: all)")
    ids: list[str] = Field(default_factory=list, description="Storage message ids from the listing")
    correlation_ids: list[str] = Field(default_factory=list)
    message_ids: list[int] = Field(default_factory=list, description="SendBird message ids")
    all: bool = False

    @model_validator(mode="after")
    def _selects_something(self) -> "ReplayRequest":
        unknown = set(self.queues) - set(SOURCE_QUEUES)
        if unknown:
            raise ValueError(f"unknown queues {sorted(unknown)}; known: {list(SOURCE_QUEUES)}")
        if not (self.all or self.ids or self.correlation_ids or self.message_ids):
            raise ValueError("select messages with ids, correlation_ids, message_ids, or all=true")
        return self

    def selects(self, e: PoisonEntry) -> bool:
        return (self.all or e.id in self.ids or (e.correlation_id is not None and e.correlation_id
                in self.correlation_ids) or (e.message_id is not None and e.message_id in self.message_ids))


def replay(queues: QueueSender, request: ReplayRequest, *, started_ms: int | None = None) -> list[PoisonEntry]:
    """Move the selected poison messages back to their source queues; returns what was replayed.

    Each records queue and host poison queue is read with receive (messages hidden for
    ``REPLAY_LEASE_SECONDS``); the selected ones are re-sent to the source queue and then deleted, the others
    made visible again after the scan. Only messages inserted before the replay started (``started_ms``, epoch
    ms, default now) are selected, and each poisoned delivery once, so a message replayed here that is poisoned
    again while the scan goes on is not replayed a second time. A crash between re-send and delete leaves a
    copy in the poison queue: replaying it again is harmless (the stages answer a message at most once).
    """
    cutoff = now_ms() if started_ms is None else started_ms
    replayed: list[PoisonEntry] = []
    done: set[tuple] = set()
    for q in request.queues or SOURCE_QUEUES:
        for name in (poison_record_queue(q), poison_queue_name(q)):
            replayed += _replay_queue(queues, q, name, request, cutoff, done)
    return replayed


def _replay_queue(queues: QueueSender, source_queue: str, name: str, request: ReplayRequest, cutoff_ms: int,
                  done: set[tuple]) -> list[PoisonEntry]:
    client = queues.client(name)
    replayed, kept = [], []  # kept: not selected, hidden during the scan so every receive returns new messages
    try:
        while batch := list(client.receive_messages(max_messages=PAGE, visibility_timeout=REPLAY_LEASE_SECONDS)):
            for m in batch:
                entry = parse_entry(source_queue, m.id, m.content)
                inserted_ms = m.inserted_on.timestamp() * 1000 if m.inserted_on else 0
                if request.selects(entry) and inserted_ms <= cutoff_ms and entry.key() not in done:
                    queues.send(source_queue, mark_replayed(entry.original))
                    client.delete_message(m)
                    done.add(entry.key())
                    replayed.append(entry)
                elif request.selects(entry) and entry.key() in done:
                    client.delete_message(m)  # a second copy of a delivery just replayed
                else:
                    kept.append(m)
    except ResourceNotFoundError:
        pass  # no such queue: nothing to replay
    finally:
        for m in kept:
            client.update_message(m, visibility_timeout=0)
    return replayed
