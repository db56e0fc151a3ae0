"""Versioned queue message models (pydantic v2): the only shapes that travel between stages.

Every message carries the SendBird ``message_id``, ``channel_url``, ``user_id``
(SendBird ``sender.user_id``), a ``correlation_id`` for the whole conversation
turn, a W3C ``traceparent`` (when telemetry is on) and timestamps in epoch
milliseconds. Each message type has a ``type`` tag and an integer ``version``;
:func:`decode` refuses a message of another type or an unknown version with a
:class:`~shared.errors.PermanentError` that says which, so that it is poisoned
with a reason rather than half-processed.

Queue flow::

    webhook -> chat-inbound (InboundMessage) -> route-<route> (RoutedMessage)
            -> chat-reply (ReplyMessage) -> SendBird
    intent stage (fallback / low confidence) -> review-capture (ReviewCapture) -> review inbox (Cosmos DB)
    any stage -> <queue>-poison-records (PoisonRecord)
    host (last attempt crashed / timed out) -> <queue>-poison (raw) -> poison trigger -> <queue>-poison-records

Rolling upgrades and message versions
-------------------------------------
Two builds of the app read each other's messages: during a deployment slot swap (production's slot settings,
which enable the queue triggers, are applied to the incoming build before the outgoing one stops; both share the
queues), after a rollback swap, when a staging smoke test with a user message (``--accept-user-id``) enqueues
through the staging intake, and whenever a message waits in a queue (re-queued, rescheduled, invisible after a
terminated invocation) or in a poison record (kept for replay) while a release goes out. So every message type
follows one rule:

1. **Readers ignore what they do not know.** The queue message models and the models nested in them (:class:`Hop`,
   :class:`IntentScore`, :class:`Entity`, the ``state_version`` object) ignore unknown fields
   (``extra="ignore"``): an older reader processes a newer writer's message of the same ``version`` as it always
   did. Known fields are validated exactly as before. An ignored field is *dropped*, not carried along: a decoded
   message re-serialised by this build (an order-wait re-queue, a 429 reschedule, the next stage's message) holds
   only the fields this build knows. That is deliberate: a field is only ever written by code that understands it,
   so an older build cannot forward a value it could not keep consistent with its own changes (e.g. a document
   version after it wrote the document); the newer reader then sees an older writer's message, which it must
   accept anyway (rule 2). Nothing relies on refusing unknown fields: a field only has an effect when this build
   reads it, and the sealed ``state_version`` is trusted only when its HMAC verifies. Replaying a poison record
   re-sends its ``original`` body as it was written (unknown fields included); :class:`PoisonRecord` itself ignores
   unknown fields too, so older ops tooling still finds a newer record's ``original``, ``reason`` and ids instead
   of mistaking the record for a raw body and replaying the record itself.
2. **Within a version, only optional additions.** A new field has a default that means what an older writer's
   message (without it) always meant, and is safe to ignore: an older reader drops it and must still do the right
   thing. Removing a field, making one required, changing what a field accepts (type, constraints, allowed
   values, default) or adding a required field is a breaking change: it needs a new ``version``, and readers must
   accept the new version one release before writers produce it (and keep reading the old one while messages of
   it can still exist, poison records included). :func:`decode` reads one version per type today, so that release
   also teaches it the second one. The schema cannot tell whether a field is safe to ignore: a field a reader
   must act on is a change of meaning, however optional. ``state_version`` is one: it proves the send claim and,
   after a deferred handler write, holds the answer not written yet, so a reply sender that dropped it would wait
   for the claim and then refuse the reply as not recorded. Such a field needs a version, or writers may fill it
   only once every reader knows it.
3. ``tests/test_message_compat.py`` holds each type's current version to this: it compares the models' JSON
   schemas with the snapshots in ``tests/data/message_schemas/<type>-v<version>.json`` and decodes messages as a
   newer build (an unknown field added) and an older build (the optional fields left out) would write them.
   After a compatible change, regenerate the snapshots with
   ``.venv/bin/python -m tests.test_message_compat --write`` and commit them.
"""

from __future__ import annotations

import json
import time
from typing import Any, ClassVar, Literal, Type, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import PermanentError
from shared.state import StateVersion

# ---------------------------------------------------------------------------
# Queue names (lowercase letters, digits, single hyphens; 3-63 chars)
# ---------------------------------------------------------------------------
INBOUND_QUEUE = "chat-inbound"
REPLY_QUEUE = "chat-reply"
#: Messages the intent stage captured for the review inbox (fallback or low confidence; shared/review.py).
REVIEW_QUEUE = "review-capture"
#: The storage connection app setting every trigger and binding uses.
STORAGE_CONNECTION = "AzureWebJobsStorage"


#: Longest utterance carried between stages (characters); longer texts are cut by the intake.
#: Keeps every queue message far below the 64 KiB (after base64) Storage queue limit.
MAX_UTTERANCE_CHARS = 4_000


#: Largest SendBird ``message_id`` accepted: 2^53 - 1, the largest integer every JSON reader keeps exact
#: (SendBird's ids are int64; a larger one would be silently rounded by JavaScript-based tooling).
MAX_MESSAGE_ID = 2**53 - 1


def poison_queue_name(queue: str) -> str:
    """The host's poison queue for ``queue``: ``<queue>-poison``. The Functions host moves a message there,
    raw and without a reason, when the function fails on its last attempt (a crash, or ``functionTimeout``
    restarting the worker); the app's poison trigger (:mod:`shared.dead_letters`) turns each into a
    :class:`PoisonRecord` and answers the user."""
    return f"{queue}-poison"


def poison_record_queue(queue: str) -> str:
    """Where :class:`PoisonRecord` s of ``queue`` are kept: ``<queue>-poison-records``. Separate from the host's
    poison queue, because a queue trigger consumes what it watches."""
    return f"{queue}-poison-records"


#: Route names: lowercase letters, digits, ``_`` (the route registry, :mod:`shared.routes`, holds the routes).
ROUTE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"


def now_ms() -> int:
    """Current time, epoch milliseconds."""
    return time.time_ns() // 1_000_000


class Hop(BaseModel):
    """Timing of one stage this conversation turn went through (all in ms)."""

    model_config = ConfigDict(extra="ignore", frozen=True)  # rolling upgrades: see the module docstring
    stage: str = Field(description="the queue the stage consumed, or 'intake'")
    queue_wait_ms: int = Field(ge=0, description="from enqueue to the stage's start")
    duration_ms: int = Field(ge=0, description="from the stage's start to its next message")
    dependency_ms: dict[str, int] = Field(default_factory=dict,
                                          description="of which in outbound calls, by system (intent, sendbird, cosmos)")


QM = TypeVar("QM", bound="QueueMessageBase")


class QueueMessageBase(BaseModel):
    """Fields every queue message carries. Subclasses fix ``type`` and ``version``.

    Unknown fields are ignored (and not carried along when the message is re-serialised): a newer build may add
    optional fields within a version (module docstring, "Rolling upgrades and message versions")."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    TYPE: ClassVar[str]
    VERSION: ClassVar[int]

    type: str
    version: int
    correlation_id: str = Field(min_length=1, max_length=64)
    traceparent: str | None = Field(default=None, max_length=55)
    message_id: int = Field(ge=0, le=MAX_MESSAGE_ID, description="SendBird payload.message_id of the user's message")
    channel_url: str = Field(min_length=1, max_length=512)
    user_id: str = Field(min_length=1, max_length=256, description="SendBird sender.user_id")
    sendbird_created_at_ms: int = Field(ge=0, description="SendBird payload.created_at, epoch ms")
    received_at_ms: int = Field(ge=0, description="when the webhook intake accepted it, epoch ms")
    enqueued_at_ms: int = Field(ge=0, description="when this message was put on its queue, epoch ms")
    hops: tuple[Hop, ...] = Field(default=(), max_length=16, description="stages passed so far, oldest first")
    replayed: bool = Field(default=False, description="re-sent from a poison queue by an operator")

    def to_queue_text(self) -> str:
        """JSON text for a queue (SDK message body); UTF-8, not ASCII-escaped."""
        return self.model_dump_json()

    def to_queue_bytes(self) -> bytes:
        """The UTF-8 bytes of :meth:`to_queue_text`, for queue output bindings (``func.Out[bytes]``).

        The host passes bytes through unchanged, whereas a ``str`` that parses as JSON is re-serialized by the host
        (indented, about 30 % larger, ISO-date-looking strings rewritten; ``../shared/reference/functions-host-rules.md``,
        "Output bindings"): the Python worker encodes ``bytes`` as a ``bytes`` datum
        (azure-functions ``QueueMessageOutConverter.encode``), which the host writes as the message as is.
        """
        return self.model_dump_json().encode("utf-8")

    def with_hop(self, stage: str, queue_wait_ms: int, started_at_ms: int,
                 dependency_ms: dict[str, float] | None = None, traceparent: str | None = None) -> "QueueMessageBase":
        """A copy with one more :class:`Hop` (``stage`` started at ``started_at_ms``, ends now), enqueued now,
        carrying ``traceparent`` (the producing stage's span) when given."""
        now = now_ms()
        hop = Hop(stage=stage, queue_wait_ms=max(0, queue_wait_ms), duration_ms=max(0, now - started_at_ms),
                  dependency_ms={k: round(v) for k, v in (dependency_ms or {}).items()})
        update = {"hops": (*self.hops, hop), "enqueued_at_ms": now}
        if traceparent:
            update["traceparent"] = traceparent
        return self.model_copy(update=update)

    @classmethod
    def following(cls: Type[QM], previous: "QueueMessageBase", **fields: Any) -> QM:  # noqa: UP006 - `type` is a field
        """The next stage's message for the same conversation turn: ``previous``'s ids, timings and hops,
        enqueued now, plus ``fields``. Raises pydantic's ``ValidationError`` on bad fields."""
        common = {k: getattr(previous, k) for k in QueueMessageBase.model_fields if k not in ("type", "version")}
        common["enqueued_at_ms"] = now_ms()
        return cls(**{**common, **fields})


class InboundMessage(QueueMessageBase):
    """A user's chat message accepted by the webhook intake (queue ``chat-inbound``)."""

    TYPE: ClassVar[str] = "inbound"
    VERSION: ClassVar[int] = 1
    type: Literal["inbound"] = "inbound"
    version: Literal[1] = 1

    message_type: Literal["MESG", "FILE"] = Field(description="SendBird message type")
    text: str = Field(default="", max_length=MAX_UTTERANCE_CHARS, description="the utterance (MESG); empty for FILE")
    file_name: str | None = Field(default=None, max_length=1024)


class IntentScore(BaseModel):
    """One intent and its confidence score (0..1), CLU ``intents[]``."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    category: str
    confidence_score: float = Field(ge=0, le=1)


class Entity(BaseModel):
    """One entity found in the utterance, CLU ``entities[]`` (offset/length in text elements)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    category: str
    text: str
    offset: int = Field(ge=0)
    length: int = Field(ge=0)
    confidence_score: float = Field(default=1.0, ge=0, le=1)
    key: str | None = Field(default=None, description="canonical value of a list entity (CLU ListKey)")


class IntentPrediction(BaseModel):
    """The parts of a CLU prediction the gateway uses. Scores 0..1, intents sorted best first."""

    query: str
    top_intent: str | None
    intents: list[IntentScore]
    entities: list[Entity]
    model_version: str | None = Field(default=None, description="the model that answered (the project's intent "
                                      "service's x-model-version header); None from Azure CLU")

    @property
    def confidence_score(self) -> float:
        """Confidence score of the top intent (0 when there is none)."""
        return next((i.confidence_score for i in self.intents if i.category == self.top_intent), 0.0)


class RoutedMessage(QueueMessageBase):
    """A message classified by the intent stage, on its route's queue (``route-<route>``)."""

    TYPE: ClassVar[str] = "routed"
    VERSION: ClassVar[int] = 1
    type: Literal["routed"] = "routed"
    version: Literal[1] = 1

    route: str = Field(pattern=ROUTE_NAME_PATTERN, description="the branch route (shared.routes registry)")
    text: str = Field(default="", max_length=MAX_UTTERANCE_CHARS)
    language: Literal["ko", "en"]
    top_intent: str | None = Field(description="CLU topIntent; None when not classified (e.g. a file)")
    confidence_score: float = Field(default=0.0, ge=0, le=1)
    intents: list[IntentScore] = Field(default_factory=list, max_length=50)
    entities: list[Entity] = Field(default_factory=list, max_length=100)
    slot_filled: str | None = Field(default=None, description="the pending slot this message filled, if any")
    seq: int = Field(default=0, ge=0, description="the user's per-user message sequence number")
    order_waits: int = Field(default=0, ge=0, description="times re-queued to wait for an earlier message")
    state_version: StateVersion | None = Field(default=None, description="the user's document as the intent "
                                               "stage's admission left it (the handler writes on it without a read)")

    def entity(self, category: str) -> Entity | None:
        """The first entity of ``category``, or None."""
        return next((e for e in self.entities if e.category == category), None)


class ReplyMessage(QueueMessageBase):
    """The bot's answer to one user message, for the reply sender (queue ``chat-reply``)."""

    TYPE: ClassVar[str] = "reply"
    VERSION: ClassVar[int] = 1
    type: Literal["reply"] = "reply"
    version: Literal[1] = 1

    text: str = Field(min_length=1, max_length=5_000)
    language: Literal["ko", "en"]
    route: str | None = Field(default=None, pattern=ROUTE_NAME_PATTERN)
    top_intent: str | None = Field(default=None, description="CLU topIntent of the user's message")
    confidence_score: float = Field(default=0.0, ge=0, le=1, description="its confidence score")
    reply_key: str = Field(description="response catalog key the text came from")
    dedup_id: str = Field(min_length=1, max_length=128, description="SendBird dedup_id for this reply")
    seq: int = Field(default=0, ge=0, description="the user's per-user message sequence number")
    reschedules: int = Field(default=0, ge=0, description="times rescheduled after a SendBird 429")
    state_version: StateVersion | None = Field(default=None, description="the user's document as the handler's "
                                               "write (answer + send claim) left it: the reply sender's fast path")


class ReviewCapture(QueueMessageBase):
    """A message the bot did not understand well, for the review inbox (queue ``review-capture``).

    Written by the intent stage through an output binding (no extra call on the hot path) when the route is
    ``fallback`` or the confidence score is below ``REVIEW_CONFIDENCE_THRESHOLD``; the review stage
    (:mod:`shared.review`) folds it into the deduplicated review item, applying the PII mode there.
    """

    TYPE: ClassVar[str] = "review"
    VERSION: ClassVar[int] = 1
    type: Literal["review"] = "review"
    version: Literal[1] = 1

    reason: Literal["fallback", "low_confidence"]
    text: str = Field(max_length=MAX_UTTERANCE_CHARS, description="the utterance as classified (its excerpt)")
    language: Literal["ko", "en"]
    route: str = Field(pattern=ROUTE_NAME_PATTERN)
    top_intent: str | None = None
    confidence_score: float = Field(default=0.0, ge=0, le=1)
    intents: list[IntentScore] = Field(default_factory=list, max_length=10, description="best first")
    model_version: str = Field(default="", max_length=200, description="the model (or deployment) that answered")


class PoisonRecord(BaseModel):
    """What the app writes to ``<queue>-poison``: the original message plus why it failed.

    Read by the poison trigger and the ops tooling (``api/ops/poison``, ``python -m tools.poison``), which tell a
    record from a raw body by validating it as a record. Unknown fields are ignored so that tooling one release
    older still reads a newer record (and replays its ``original``) rather than treating the whole record as a raw
    body; a raw queue message never passes for a record (its ``type`` is not ``poison`` and it lacks the record's
    required fields)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    TYPE: ClassVar[str] = "poison"
    VERSION: ClassVar[int] = 1
    type: Literal["poison"] = "poison"
    version: Literal[1] = 1

    source_queue: str
    reason: str
    error_type: str
    dequeue_count: int
    poisoned_at_ms: int
    correlation_id: str | None = None
    message_id: int | None = None
    original: str = Field(description="the original message body as text (undecodable bytes replaced)")


M = TypeVar("M", bound=QueueMessageBase)


def decode(body: bytes | str, model: type[M]) -> M:
    """Parse a queue message body into ``model``.

    Raises :class:`PermanentError` when the body is not UTF-8 JSON, is another
    message type, has a version this build does not read, or fails validation.
    """
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PermanentError(f"undecodable {model.TYPE} message: {exc}") from exc
    except RecursionError as exc:
        raise PermanentError(f"undecodable {model.TYPE} message: nested too deeply") from exc
    if not isinstance(data, dict):
        raise PermanentError(f"undecodable {model.TYPE} message: expected a JSON object, got {type(data).__name__}")
    if data.get("type") != model.TYPE:
        raise PermanentError(f"wrong message type {data.get('type')!r}, expected {model.TYPE!r}")
    version = data.get("version")
    if type(version) is not int or version != model.VERSION:  # noqa: E721 - true == 1 in Python, not here
        raise PermanentError(
            f"unknown {model.TYPE} message version {data.get('version')!r}; this build reads version {model.VERSION}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise PermanentError(f"invalid {model.TYPE} message: {problems}") from exc
