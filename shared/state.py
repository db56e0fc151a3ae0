"""Per-user conversation state: one document per SendBird user.

Where it is stored: :class:`shared.ports.StateStore` (Cosmos DB adapter :mod:`shared.clients.cosmos`, an in-memory
fake for unit tests, both held to ``tests/test_state_contract.py``).
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Catalog key of the apology a user gets when their message was poisoned.
APOLOGY_KEY = "apology.error"


def reply_dedup_id(message_id: int) -> str:
    """SendBird ``dedup_id`` of the bot's reply to user message ``message_id``."""
    return f"reply-{message_id}"


def apology_dedup_id(message_id: int) -> str:
    """SendBird ``dedup_id`` of the apology for user message ``message_id`` (differs from the reply's,
    so that a replay after a fix can still deliver the real answer)."""
    return f"apology-{message_id}"


TurnStatus = Literal["received", "answered", "sent", "silent", "failed"]
#: A turn in one of these states no longer holds back the user's later messages.
FINAL_STATUSES: frozenset[str] = frozenset({"sent", "silent", "failed"})


class SendClaim(BaseModel):
    """A reply sender is sending ``dedup_id`` since ``since_ms`` (epoch ms); expires after the send lease."""

    model_config = ConfigDict(extra="ignore")
    dedup_id: str
    since_ms: int


class Turn(BaseModel):
    """One user message and its lifecycle: received -> answered -> sent (or silent / failed).

    ``seq`` orders a user's messages (assigned once, at admission by the intent stage).
    ``correlation_id`` is the accepted delivery's; another delivery of the same
    ``message_id`` (a SendBird webhook retry) has another one and is dropped as a duplicate.
    """

    model_config = ConfigDict(extra="ignore", validate_assignment=True)
    message_id: int
    seq: int = 0
    correlation_id: str | None = None
    channel_url: str | None = Field(default=None, description="the SendBird channel the message was sent in")
    status: TurnStatus = "received"
    received_at_ms: int = 0
    at_ms: int = 0
    route: str | None = None
    intent: str | None = None
    confidence_score: float = 0.0
    reply_key: str | None = None
    reply_text: str | None = None
    sending: SendClaim | None = None
    sent_dedup_ids: list[str] = Field(default_factory=list, description="replies SendBird accepted for this turn")
    sent_at_ms: int | None = None

    @property
    def answered(self) -> bool:
        """The handler produced a real answer (not only an apology)."""
        return self.reply_key not in (None, APOLOGY_KEY) and self.status in ("answered", "sent")

    @property
    def apologized(self) -> bool:
        """The user got an apology for this message (it was poisoned)."""
        return apology_dedup_id(self.message_id) in self.sent_dedup_ids


class UserState(BaseModel):
    """The Cosmos DB document of one user (partition key ``/user_id``).

    Fields this build does not know (written by another tool or a newer version) are kept as they are
    on every write (``extra="allow"``), so they are not lost. Cosmos system fields (``_etag``, ``_ts``...)
    are dropped on read.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    id: str
    user_id: str
    schema_version: Literal[1] = 1
    channel_url: str | None = None
    language: Literal["ko", "en"] | None = None
    pending_slot: str | None = Field(default=None, description="the slot the next message may fill (a route's slot)")
    handoff_until_ms: int | None = Field(default=None, description="bot stays silent until this epoch ms")
    next_seq: int = Field(default=1, description="sequence number of the user's next admitted message")
    turns: list[Turn] = Field(default_factory=list, description="most recent last, bounded")
    recent_message_ids: dict[str, int] = Field(
        default_factory=dict, description="SendBird message_id -> received_at_ms of every message admitted within "
        "the webhook replay window, kept whatever the history length, so a replayed webhook is a duplicate")
    created_at_ms: int = 0
    updated_at_ms: int = 0

    @model_validator(mode="before")
    @classmethod
    def _drop_system_fields(cls, data: object) -> object:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not k.startswith("_")}
        return data

    @classmethod
    def new(cls, user_id: str, channel_url: str | None, now_ms: int) -> "UserState":
        return cls(id=document_id(user_id), user_id=user_id, channel_url=channel_url,
                   created_at_ms=now_ms, updated_at_ms=now_ms)

    def is_handed_off(self, now_ms: int) -> bool:
        """True while a human agent owns the conversation (the bot stays silent)."""
        return self.handoff_until_ms is not None and now_ms < self.handoff_until_ms

    def turn_for(self, message_id: int) -> Turn | None:
        """The recorded turn of SendBird ``message_id``, if this message was already handled."""
        return next((t for t in self.turns if t.message_id == message_id), None)

    def record_turn(self, turn: Turn, limit: int) -> None:
        """Append ``turn`` and keep only the ``limit`` most recent turns."""
        self.turns = [*self.turns, turn][-limit:]

    def admit(self, message_id: int, correlation_id: str | None, received_at_ms: int, limit: int,
              status: TurnStatus = "received", channel_url: str | None = None) -> Turn:
        """Record a new turn with the next sequence number and return it; remember ``message_id``."""
        turn = Turn(message_id=message_id, seq=self.next_seq, correlation_id=correlation_id, status=status,
                    received_at_ms=received_at_ms, channel_url=channel_url)
        self.next_seq += 1
        self.record_turn(turn, limit)
        self.recent_message_ids = {**self.recent_message_ids, str(message_id): received_at_ms}
        return self.turns[-1]

    def seen_recently(self, message_id: int) -> bool:
        """True when ``message_id`` was admitted within the remembered window (even if its turn was evicted)."""
        return str(message_id) in self.recent_message_ids

    def forget_message_ids_before(self, cutoff_ms: int) -> None:
        """Drop remembered message ids received before ``cutoff_ms`` (epoch ms)."""
        if any(at < cutoff_ms for at in self.recent_message_ids.values()):
            self.recent_message_ids = {k: at for k, at in self.recent_message_ids.items() if at >= cutoff_ms}

    def pending_before(self, turn: Turn) -> list[Turn]:
        """Earlier turns of this user that are not final yet (they hold ``turn`` back)."""
        return [t for t in self.turns if t.seq < turn.seq and t.status not in FINAL_STATUSES]


def document_id(user_id: str) -> str:
    """Cosmos DB item id for ``user_id`` (ids may not contain ``/ \\ ? #``; those are %-escaped)."""
    return quote(user_id, safe="") if any(c in user_id for c in "/\\?#%") else user_id
