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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.models import (INBOUND_QUEUE, REPLY_QUEUE, REVIEW_QUEUE, PoisonRecord, now_ms, poison_queue_name,
                           poison_record_queue)
from shared.ports import QueuedMessage, QueuePort
from shared.routes import routes
from shared.telemetry import Redactor


def source_queues() -> tuple[str, ...]:
    """Every queue a stage consumes (inbound, one per registered route, reply, review capture): every poison queue
    there can be. A review capture the host moved (no poison trigger: nobody waits for an answer) stays in
    ``review-capture-poison``, listed and replayable here."""
    return (INBOUND_QUEUE, *routes().queues(), REPLY_QUEUE, REVIEW_QUEUE)


#: Storage queues return at most 32 messages per receive/peek call.
PAGE = 32
#: Most entries one listing returns (``offset`` pages through more).
LIST_LIMIT = 200
#: How long records stay hidden while a listing reads them, seconds.
LIST_LEASE_SECONDS = 5
#: Most records read per queue for one listing (the listing is sorted, so it reads them all up to this).
LIST_SCAN_MAX = 2_000
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
    except ValidationError as exc:
        invalid_record = exc
    correlation_id = message_id = None
    try:
        data = json.loads(content)
        if isinstance(data, dict):
            correlation_id, message_id = data.get("correlation_id"), data.get("message_id")
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict) and data.get("type") == PoisonRecord.TYPE and isinstance(data.get("original"), str):
        # a record this build cannot read (a newer version, say): still the app's record, so a replay re-sends the
        # message it holds, never the record itself (rolling upgrades: shared/models.py)
        errors = invalid_record.errors()
        why = f"{'.'.join(str(p) for p in errors[0]['loc'])}: {errors[0]['msg']}" if errors else "invalid"
        return PoisonEntry(storage_id, source_queue, "app",
                           f"a poison record this build cannot read (version {data.get('version')!r}, {why}); "
                           f"its reason: {str(data.get('reason', ''))[:500]}",
                           None, None, correlation_id if isinstance(correlation_id, str) else None,
                           message_id if type(message_id) is int else None, None,  # noqa: E721 - not bool
                           data["original"])
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


@dataclass(frozen=True)
class PoisonPage:
    """One page of the listing: ``entries``, and the ``offset`` of the next page (None: this was the last)."""

    entries: list[PoisonEntry]
    next_offset: int | None


def list_poison(queues: QueuePort, queue_names: tuple[str, ...] | None = None, *, offset: int = 0,
                limit: int = LIST_LIMIT) -> PoisonPage:
    """Poison messages of ``queue_names`` (default: every stage queue), one entry per poisoned delivery, in a
    stable order (source queue, then poisoning time, then id), from the ``offset``-th entry, at most ``limit``.

    Records are read with receive (hidden for ``LIST_LEASE_SECONDS`` while they are read, then released; at
    most ``LIST_SCAN_MAX`` per queue); raw bodies still in the host's poison queue (the poison trigger takes them
    within seconds) are peeked, never received, so listing never raises their dequeue count.
    """
    entries: dict[tuple, PoisonEntry] = {}
    for q in queue_names or source_queues():
        for entry in _records(queues, q, LIST_SCAN_MAX) + _host_moved(queues, q):
            entries.setdefault(entry.key(), entry)
    order = {q: i for i, q in enumerate(source_queues())}
    found = sorted(entries.values(), key=lambda e: (order.get(e.source_queue, len(order)), e.poisoned_at_ms or 0,
                                                    e.message_id or 0, e.id))
    more = len(found) > offset + limit
    return PoisonPage(found[offset:offset + limit], offset + limit if more else None)


def _records(queues: QueuePort, source_queue: str, wanted: int) -> list[PoisonEntry]:
    name = poison_record_queue(source_queue)
    held: list[QueuedMessage] = []
    try:
        while len(held) < wanted and (batch := queues.receive(name, PAGE, LIST_LEASE_SECONDS)):
            held += batch
    finally:
        for m in held:
            queues.release(name, m)
    return [parse_entry(source_queue, m.id, m.content) for m in held]


def _host_moved(queues: QueuePort, source_queue: str) -> list[PoisonEntry]:
    return [parse_entry(source_queue, m.id, m.content) for m in queues.peek(poison_queue_name(source_queue), PAGE)]


class ListRequest(BaseModel):
    """Query of a listing: one source queue (default all), the page's ``offset`` and ``limit`` (1..LIST_LIMIT)."""

    model_config = ConfigDict(extra="forbid")
    queue: str | None = None
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=LIST_LIMIT, ge=1, le=LIST_LIMIT)

    @model_validator(mode="after")
    def _known_queue(self) -> "ListRequest":
        if self.queue is not None and self.queue not in source_queues():
            raise ValueError(f"unknown queue {self.queue!r}; known: {list(source_queues())}")
        return self


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
        unknown = set(self.queues) - set(source_queues())
        if unknown:
            raise ValueError(f"unknown queues {sorted(unknown)}; known: {list(source_queues())}")
        if not (self.all or self.ids or self.correlation_ids or self.message_ids):
            raise ValueError("select messages with ids, correlation_ids, message_ids, or all=true")
        return self

    def selects(self, e: PoisonEntry) -> bool:
        return (self.all or e.id in self.ids or (e.correlation_id is not None and e.correlation_id
                in self.correlation_ids) or (e.message_id is not None and e.message_id in self.message_ids))


def replay(queues: QueuePort, request: ReplayRequest, *, started_ms: int | None = None) -> list[PoisonEntry]:
    """Move the selected poison messages back to their source queues; returns what was replayed.

    Each records queue and host poison queue is read with receive (messages hidden for
    ``REPLAY_LEASE_SECONDS``); the selected ones are re-sent to the source queue and then deleted, the others
    made visible again after the scan. Only messages inserted before the replay started (``started_ms``, epoch
    ms, default now) are selected, and each poisoned delivery once, so a message replayed here that is poisoned
    again while the scan goes on is not replayed a second time. A crash between re-send and delete leaves a
    copy in the poison queue: replaying it again is harmless (the stages answer a message at most once).
    """
    scan = _ReplayScan(queues, request, now_ms() if started_ms is None else started_ms)
    for q in request.queues or source_queues():
        for name in (poison_record_queue(q), poison_queue_name(q)):
            scan.queue(q, name)
    return scan.replayed


class _ReplayScan:
    """One replay: what was replayed so far (a second copy of a replayed delivery is deleted, not re-sent)."""

    def __init__(self, queues: QueuePort, request: ReplayRequest, cutoff_ms: int):
        self.queues, self.request, self.cutoff_ms = queues, request, cutoff_ms
        self.replayed: list[PoisonEntry] = []
        self.done: set[tuple] = set()

    def queue(self, source_queue: str, name: str) -> None:
        kept: list[QueuedMessage] = []  # not selected: hidden during the scan so every receive returns new ones
        try:
            while batch := self.queues.receive(name, PAGE, REPLAY_LEASE_SECONDS):
                kept += [m for m in batch if not self._take(source_queue, name, m)]
        finally:
            for m in kept:
                self.queues.release(name, m)

    def _take(self, source_queue: str, name: str, m: QueuedMessage) -> bool:
        entry = parse_entry(source_queue, m.id, m.content)
        if not self.request.selects(entry):
            return False
        if entry.key() in self.done:
            self.queues.delete(name, m)  # a second copy of a delivery just replayed
            return True
        if m.inserted_at_ms > self.cutoff_ms:
            return False  # poisoned after the replay started: left for the next one
        self.queues.send(source_queue, mark_replayed(entry.original))
        self.queues.delete(name, m)
        self.done.add(entry.key())
        self.replayed.append(entry)
        return True
