"""Queue messages for tests: an inbound message, a reply, and the turn a handler would have recorded."""

from __future__ import annotations

from typing import Any

from shared.models import InboundMessage, ReplyMessage, now_ms
from shared.ports import StateStore
from shared.state import UserState


def inbound(text: str = "hi", message_id: int = 1, user: str = "u-1", message_type: str = "MESG",
            **changes: Any) -> InboundMessage:
    """A user message as the intake enqueues it (channel ``ch-1``, correlation id ``corr-<message_id>``)."""
    t = now_ms()
    base: dict[str, Any] = dict(correlation_id=f"corr-{message_id}", message_id=message_id, channel_url="ch-1",
                                user_id=user, sendbird_created_at_ms=t, received_at_ms=t, enqueued_at_ms=t,
                                message_type=message_type, text=text)
    return InboundMessage(**{**base, **changes})


def reply_msg(reschedules: int = 0) -> ReplyMessage:
    """The greeting reply to ``inbound("hi", 11)``."""
    return ReplyMessage.following(inbound("hi", 11), text="Hello!", language="en", route="greeting",
                                  reply_key="greeting.hello", dedup_id="reply-11", reschedules=reschedules)


def admitted(store: StateStore, reply: ReplyMessage) -> StateStore:
    """Record the turn the handler would have recorded for ``reply`` (the reply sender sends only those)."""
    def record(state: UserState) -> None:
        if state.turn_for(reply.message_id) is None:
            turn = state.admit(reply.message_id, reply.correlation_id, reply.received_at_ms, 20,
                               channel_url=reply.channel_url)
            turn.reply_key, turn.reply_text, turn.status = reply.reply_key, reply.text, "answered"
    store.update(reply.user_id, reply.channel_url, record)
    return store
