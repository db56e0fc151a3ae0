"""The review inbox: messages the bot did not understand well, deduplicated, for the bot team to teach it.

Three steps, each in its own place:

1. **Capture** (intent stage, on the hot path but without any I/O): :func:`capture_for` decides whether a routed
   message goes to the inbox (route ``fallback``, or a confidence score below ``REVIEW_CONFIDENCE_THRESHOLD``;
   not a message that filled a pending slot, not a file) and returns the :class:`~shared.models.ReviewCapture` the
   intent stage writes to the ``review-capture`` queue through an output binding.
2. **Record** (review stage, queue ``review-capture``): :func:`record` folds the capture into the
   :class:`ReviewItem` of its normalised text (:func:`normalise`): a count, first/last seen, the latest top
   intents, the model versions, the users it came from (for erasure). The PII mode (``TELEMETRY_PII_MODE``)
   applies here: ``off`` keeps the first text as written, ``mask`` keeps it masked (digit runs, e-mails),
   ``strict`` keeps **no text at all** (the item id is then an HMAC of the normalised text, so equal texts still
   count together, and the inbox shows only counts and predictions). User ids are kept as
   :meth:`~shared.telemetry.Redactor.id` gives them (hashed in ``mask``/``strict``). A queue redelivery of the
   same capture is not counted twice (the item remembers its recent message ids).
3. **Decide** (console): :func:`decide` marks an item assigned (its text joined the intent project) or
   dismissed, with who, when and what the decision changed; :func:`forget_user` removes a user's share of
   every item (erasure), deleting the items only they produced.

The store is :class:`shared.ports.ReviewStore` (Cosmos DB adapter ``shared.clients.cosmos_stores``, in-memory fake
``tests.support.fakes.InMemoryReviewStore``, one contract test).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.models import IntentScore, ReviewCapture, RoutedMessage, now_ms
from shared.ports import ReviewStore
from shared.routes import FALLBACK, UNSUPPORTED
from shared.settings import Settings
from shared.telemetry import Redactor, redact_text
from shared.utterance import intent_excerpt

#: How many of a capture's best intents an item shows.
TOP_INTENTS = 3
#: How many recent message ids an item remembers (a redelivered capture is not counted twice).
RECENT_MESSAGE_IDS = 50
#: How many distinct users an item remembers by id (for erasure). Beyond that, occurrences are counted but not
#: attributed: a text more than this many people wrote is no one's personal data.
MAX_USERS = 500
#: How many distinct model versions an item lists (latest last).
MODEL_VERSIONS = 5

ReviewStatus = Literal["open", "assigned", "dismissed"]
STATUSES: tuple[str, ...] = ("open", "assigned", "dismissed")


def normalise(text: str) -> str:
    """The text two messages must share to be one review item: NFKC, case-folded, digit runs as ``#`` (order
    numbers and phone numbers differ, the phrasing does not), whitespace collapsed, punctuation around removed."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = re.sub(r"\d+", "#", t)
    t = re.sub(r"\s+", " ", t).strip()
    return t.strip(" .,!?~…。、？！'\"")


def item_id(language: str, normalised: str, redactor: Redactor, hash_key: str = "") -> str:
    """The id of the item of ``normalised`` text in ``language``: a SHA-256, or in ``strict`` mode an HMAC keyed
    with the PII hash key (the id must not let anyone confirm a guessed text)."""
    raw = f"{language}\n{normalised}".encode("utf-8")
    if redactor.mode == "strict":
        digest = hmac.new(hash_key.encode("utf-8"), raw, hashlib.sha256).hexdigest()
    else:
        digest = hashlib.sha256(raw).hexdigest()
    return f"r{digest[:40]}"


class ReviewDecision(BaseModel):
    """What the bot team decided about an item, and what that changed (shown in the inbox)."""

    model_config = ConfigDict(extra="ignore")
    action: Literal["assigned", "dismissed"]
    intent: str | None = None
    by: str
    at_ms: int
    changed: str = Field(default="", max_length=2_000, description="what the decision changed, in words")


class ReviewItem(BaseModel):
    """One deduplicated text in the review inbox (a Cosmos DB document, partition key ``/id``)."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)
    id: str
    schema_version: Literal[1] = 1
    language: Literal["ko", "en"]
    text: str | None = Field(default=None, description="first text as written (off), masked (mask), None (strict)")
    pii_mode: Literal["off", "mask", "strict"] = "off"
    count: int = Field(default=0, ge=0)
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    reasons: dict[str, int] = Field(default_factory=dict, description="fallback / low_confidence -> count")
    top_intents: list[IntentScore] = Field(default_factory=list, description="of the latest capture, best first")
    top_intent: str | None = None
    confidence_score: float = 0.0
    route: str | None = None
    model_version: str = ""
    model_versions: list[str] = Field(default_factory=list, description="distinct, latest last")
    status: ReviewStatus = "open"
    decision: ReviewDecision | None = None
    seen_since_decision: int = Field(default=0, ge=0, description="captures after the decision")
    users: dict[str, int] = Field(default_factory=dict, description="user id as stored -> occurrences")
    user_keys: list[str] = Field(default_factory=list, description="the keys of users (queries)")
    message_ids: list[int] = Field(default_factory=list, description="recent SendBird message ids")


# --------------------------------------------------------------------------- 1. capture (intent stage)
def capture_for(routed: RoutedMessage, model_version: str | None, settings: Settings) -> ReviewCapture | None:
    """The capture for ``routed`` when it belongs in the review inbox, else None (pure; no I/O)."""
    if routed.route == UNSUPPORTED or routed.slot_filled or not routed.text.strip():
        return None
    if routed.route == FALLBACK:
        reason: Literal["fallback", "low_confidence"] = "fallback"
    elif routed.confidence_score < settings.review_confidence_threshold:
        reason = "low_confidence"
    else:
        return None
    return ReviewCapture.following(
        routed, reason=reason, text=intent_excerpt(routed.text, settings.intent_max_text_chars),
        language=routed.language, route=routed.route, top_intent=routed.top_intent,
        confidence_score=routed.confidence_score, intents=routed.intents[:TOP_INTENTS],
        model_version=(model_version or settings.intent_deployment_name)[:200])


# --------------------------------------------------------------------------- 2. record (review stage)
@dataclass(frozen=True)
class ReviewDeps:
    """What the review stage needs: the store and the PII mode (with its hash key)."""

    store: ReviewStore
    redactor: Redactor
    hash_key: str = ""


def fold(item: ReviewItem | None, capture: ReviewCapture, item_key: str, redactor: Redactor,
         now: int) -> ReviewItem | None:
    """``item`` with ``capture`` counted in (a new item when None); None when it was counted already (pure)."""
    if item is not None and capture.message_id in item.message_ids:
        return None
    if item is None:
        item = ReviewItem(id=item_key, language=capture.language, text=redact_text(capture.text, redactor.mode),
                          pii_mode=redactor.mode,
                          first_seen_ms=now)
    else:
        item = item.model_copy(deep=True)
    user = redactor.id(capture.user_id)
    users = dict(item.users)
    if user in users or len(users) < MAX_USERS:
        users[user] = users.get(user, 0) + 1
    versions = [v for v in item.model_versions if v != capture.model_version] + [capture.model_version]
    item.count += 1
    item.last_seen_ms = max(item.last_seen_ms, now)
    item.reasons = {**item.reasons, capture.reason: item.reasons.get(capture.reason, 0) + 1}
    item.top_intents = list(capture.intents[:TOP_INTENTS])
    item.top_intent, item.confidence_score, item.route = capture.top_intent, capture.confidence_score, capture.route
    item.model_version, item.model_versions = capture.model_version, versions[-MODEL_VERSIONS:]
    item.users, item.user_keys = users, sorted(users)
    item.message_ids = [*item.message_ids, capture.message_id][-RECENT_MESSAGE_IDS:]
    if item.status != "open":
        item.seen_since_decision += 1
    return item


def record(capture: ReviewCapture, deps: ReviewDeps, *, clock: Callable[[], int] = now_ms) -> ReviewItem | None:
    """Fold ``capture`` into its item in the store (one optimistic update); returns the item (None: a redelivery).

    Errors: :class:`~shared.errors.TransientError` from the store (the queue retries)."""
    key = item_id(capture.language, normalise(capture.text), deps.redactor, deps.hash_key)
    return deps.store.update(key, lambda item: fold(item, capture, key, deps.redactor, clock()))


# --------------------------------------------------------------------------- 3. decide, forget (console)
class ReviewNotFound(LookupError):
    """No review item with that id."""


def decide(store: ReviewStore, item_key: str, action: Literal["assigned", "dismissed"], by: str, *,
           intent: str | None = None, changed: str = "", clock: Callable[[], int] = now_ms) -> ReviewItem:
    """Mark the item assigned to ``intent`` or dismissed. Raises :class:`ReviewNotFound`."""
    def mutate(item: ReviewItem | None) -> ReviewItem | None:
        if item is None:
            raise ReviewNotFound(item_key)
        item = item.model_copy(deep=True)
        item.status = action
        item.decision = ReviewDecision(action=action, intent=intent, by=by, at_ms=clock(), changed=changed)
        item.seen_since_decision = 0
        return item
    result = store.update(item_key, mutate)
    assert result is not None
    return result


def reopen(store: ReviewStore, item_key: str) -> ReviewItem:
    """Put a decided item back in the inbox (the decision is kept for the record until the next one)."""
    def mutate(item: ReviewItem | None) -> ReviewItem | None:
        if item is None:
            raise ReviewNotFound(item_key)
        item = item.model_copy(deep=True)
        item.status = "open"
        return item
    result = store.update(item_key, mutate)
    assert result is not None
    return result


def _without_user(item: ReviewItem | None, user_key: str, taken: list[int]) -> ReviewItem | None:
    """``item`` without ``user_key``'s occurrences (appended to ``taken``); None when they are not in it."""
    if item is None or user_key not in item.users:
        return None
    item = item.model_copy(deep=True)
    users = dict(item.users)
    n = users.pop(user_key)
    taken.append(n)
    item.users, item.user_keys, item.count = users, sorted(users), max(0, item.count - n)
    return item


@dataclass(frozen=True)
class Forgotten:
    """What erasing one user did to the inbox."""

    items_deleted: int
    items_updated: int
    occurrences_removed: int


def forget_user(store: ReviewStore, user_key: str) -> Forgotten:
    """Remove the user (as stored: :meth:`Redactor.id`) from every item: their occurrences are subtracted and an
    item only they produced is deleted, with its text."""
    deleted = updated = removed = 0
    for found in store.items_of_user(user_key):
        taken: list[int] = []

        def mutate(item: ReviewItem | None, taken: list[int] = taken) -> ReviewItem | None:
            return _without_user(item, user_key, taken)
        after = store.update(found.id, mutate)
        if after is None:
            continue
        removed += taken[-1]
        if not after.users:
            store.delete(after.id)
            deleted += 1
        else:
            updated += 1
    return Forgotten(deleted, updated, removed)
