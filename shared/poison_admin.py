"""List poison messages with their reasons, and replay selected ones after a fix.

Poison queues hold two kinds of messages:

- :class:`~shared.models.PoisonRecord` written by the app (``recorded_by="app"``): the reason,
  error type, dequeue count, correlation id, SendBird ``message_id`` and the original body;
- the raw original body moved by the Functions host when a worker died on every attempt
  (``recorded_by="host"``, reason unknown).

Replaying puts the original body back on its source queue and deletes the poison
message. Replies already sent are not sent again: the reply sender's sent records
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
from shared.models import INBOUND_QUEUE, REPLY_QUEUE, PoisonRecord, Route, poison_queue_name

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

    def to_dict(self) -> dict:
        return asdict(self)


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
    except ValueError:
        pass
    return PoisonEntry(storage_id, source_queue, "host",
                       "moved by the Functions host after maxDequeueCount (worker died or timed out; no reason "
                       "recorded)", None, None, correlation_id, message_id, None, content)


def mark_replayed(original: str) -> str:
    """The original body with ``replayed: true`` when it is one of our queue messages (else unchanged),
    so the stages may answer a message that already got an apology."""
    try:
        data = json.loads(original)
    except ValueError:
        return original
    if isinstance(data, dict) and data.get("type") in ("inbound", "routed", "reply"):
        data["replayed"] = True
        return json.dumps(data, ensure_ascii=False)
    return original


def list_poison(queues: QueueSender, source_queues: tuple[str, ...] = SOURCE_QUEUES) -> list[PoisonEntry]:
    """Poison messages of ``source_queues`` (up to 32 per queue: Storage's peek limit), oldest first."""
    entries = []
    for q in source_queues:
        for m in queues.peek(poison_queue_name(q), max_messages=PAGE):
            entries.append(parse_entry(q, m.id, m.content))
    return entries


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


def replay(queues: QueueSender, request: ReplayRequest) -> list[PoisonEntry]:
    """Move the selected poison messages back to their source queues; returns what was replayed.

    Each poison queue is read with receive (messages hidden for ``REPLAY_LEASE_SECONDS``); the selected
    ones are re-sent to the source queue and then deleted, the others made visible again after the scan.
    A crash between re-send and delete leaves a copy in the poison queue: replaying it again is harmless.
    """
    replayed: list[PoisonEntry] = []
    for q in request.queues or SOURCE_QUEUES:
        client = queues.client(poison_queue_name(q))
        kept = []  # not selected: hidden during the scan so every receive returns new messages
        try:
            while batch := list(client.receive_messages(max_messages=PAGE, visibility_timeout=REPLAY_LEASE_SECONDS)):
                for m in batch:
                    entry = parse_entry(q, m.id, m.content)
                    if request.selects(entry):
                        queues.send(q, mark_replayed(entry.original))
                        client.delete_message(m)
                        replayed.append(entry)
                    else:
                        kept.append(m)
        except ResourceNotFoundError:
            pass  # no poison queue: nothing to replay
        finally:
            for m in kept:
                client.update_message(m, visibility_timeout=0)
    return replayed
