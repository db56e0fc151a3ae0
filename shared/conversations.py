"""What the bot team can do to a conversation (the console's conversations page): find it, look at its state and
recent turns, end a handoff early, clear a pending slot, and erase the user's data.

Changes go through the state store's optimistic update (:meth:`shared.ports.StateStore.update`), like the
stages' own, so they never overwrite a concurrent turn. Erasure removes the state document (turns, replies,
idempotency records), the user's share of the review inbox (:func:`shared.review.forget_user`) and records in the
audit log *that* it happened and how much it removed, under an HMAC of the user id (:func:`erasure_subject`),
never the data itself. Application Insights keeps its own copy for its retention period
(purge API; see README, "Console").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.models import now_ms
from shared.ports import ReviewStore, StateAdmin, StateStore
from shared.review import forget_user
from shared.state import UserState
from shared.telemetry import Redactor, hash_id


class ConversationNotFound(LookupError):
    """No state document for that user."""


@dataclass(frozen=True)
class ConversationDeps:
    """The state store (both sides), the review inbox and the PII mode."""

    state_store: StateStore
    state_admin: StateAdmin
    review_store: ReviewStore
    redactor: Redactor
    hash_key: str = ""


def find(deps: ConversationDeps, query: str, limit: int = 20) -> list[UserState]:
    """Conversations matching ``query``: a SendBird user id (exact), else a channel URL; empty query: the most
    recently active ones."""
    query = query.strip()
    if not query:
        return deps.state_admin.recent(limit)
    state = deps.state_admin.find(query)
    if state is not None:
        return [state]
    return deps.state_admin.find_by_channel(query, limit)


def _change(deps: ConversationDeps, user_id: str, change: Any) -> UserState:
    current = deps.state_admin.find(user_id)
    if current is None:
        raise ConversationNotFound(user_id)

    def mutate(state: UserState) -> UserState:
        change(state)
        return state
    return deps.state_store.update(user_id, current.channel_url, mutate)


def end_handoff(deps: ConversationDeps, user_id: str) -> UserState:
    """The bot answers this user again from the next message on. Raises :class:`ConversationNotFound`."""
    def change(state: UserState) -> None:
        if state.handoff_until_ms is not None and state.handoff_until_ms > now_ms():
            state.handoff_until_ms = None
    return _change(deps, user_id, change)


def clear_slot(deps: ConversationDeps, user_id: str) -> UserState:
    """Forget what the bot was waiting for (an order number, a category). Raises :class:`ConversationNotFound`."""
    return _change(deps, user_id, lambda state: setattr(state, "pending_slot", None))


@dataclass(frozen=True)
class Erasure:
    """What erasing a user removed (no data: counts and the pseudonymous subject)."""

    subject: str
    state_deleted: bool
    review_items_deleted: int
    review_items_updated: int
    review_occurrences_removed: int

    def details(self) -> dict[str, Any]:
        return {"state_deleted": self.state_deleted, "review_items_deleted": self.review_items_deleted,
                "review_items_updated": self.review_items_updated,
                "review_occurrences_removed": self.review_occurrences_removed}


def erasure_subject(user_id: str, hash_key: str) -> str:
    """How the audit log names an erased user: an HMAC of the id (whatever the PII mode), so "was this user
    erased?" can be answered by recomputing it, while the log itself holds no id."""
    return "user:" + hash_id(user_id, hash_key)


def erase(deps: ConversationDeps, user_id: str) -> Erasure:
    """Delete the user's state document and their share of the review inbox. Idempotent (erasing twice removes
    nothing the second time). The caller records the returned :class:`Erasure` in the audit log."""
    forgotten = forget_user(deps.review_store, deps.redactor.id(user_id))
    deleted = deps.state_admin.delete(user_id)
    return Erasure(subject=erasure_subject(user_id, deps.hash_key), state_deleted=deleted,
                   review_items_deleted=forgotten.items_deleted, review_items_updated=forgotten.items_updated,
                   review_occurrences_removed=forgotten.occurrences_removed)
