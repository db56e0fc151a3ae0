"""Reply sender: deliver one :class:`~shared.models.ReplyMessage` through the SendBird Platform API.

- Sent: returns ``"sent"``.
- SendBird 429: the reply is re-enqueued on ``chat-reply``, invisible for
  ``X-RateLimit-RetryAfter`` seconds (``reschedules`` + 1), and ``"rescheduled"``
  is returned so the current message is deleted; nothing sleeps in the function.
  After ``REPLY_MAX_RESCHEDULES`` it becomes a :class:`~shared.errors.PermanentError`.
- 5xx / timeouts: :class:`~shared.errors.TransientError` propagates (host retry).
- other 4xx: :class:`~shared.errors.PermanentError` propagates (poison with reason).
"""

from __future__ import annotations

import json
import logging
from typing import Literal

from shared.clients.queues import QueueSender
from shared.clients.sendbird import SendBirdClient
from shared.errors import PermanentError, RateLimited
from shared.models import REPLY_QUEUE, ReplyMessage, now_ms
from shared.settings import Settings

log = logging.getLogger(__name__)


def reply_data(reply: ReplyMessage) -> str:
    """SendBird message ``data`` (an opaque string): JSON with the correlation id, route, intent, score and timings.

    ``timings``: ``received_at_ms`` (intake, epoch ms), ``hops`` (each stage's queue wait, duration and
    outbound-call ms) and ``reply_queue_wait_ms`` (time on ``chat-reply`` before this send).
    """
    return json.dumps({
        "correlation_id": reply.correlation_id, "route": reply.route.value if reply.route else None,
        "intent": reply.top_intent, "confidence": round(reply.confidence_score, 4), "reply_key": reply.reply_key,
        "timings": {"received_at_ms": reply.received_at_ms, "hops": [h.model_dump() for h in reply.hops],
                    "reply_queue_wait_ms": max(0, now_ms() - reply.enqueued_at_ms)},
    }, ensure_ascii=False)


def deliver(reply: ReplyMessage, *, sendbird: SendBirdClient, queues: QueueSender,
            settings: Settings) -> Literal["sent", "rescheduled"]:
    """Send ``reply`` or reschedule it (see module docstring)."""
    try:
        sendbird.send_bot_message(reply.channel_url, reply.text, reply.dedup_id,
                                  data=reply_data(reply))
        return "sent"
    except RateLimited as exc:
        if reply.reschedules >= settings.reply_max_reschedules:
            raise PermanentError(f"still rate limited after {reply.reschedules} reschedules: {exc.reason}") from exc
        again = reply.model_copy(update={"reschedules": reply.reschedules + 1, "enqueued_at_ms": now_ms()})
        queues.send(REPLY_QUEUE, again.to_queue_text(), delay_seconds=exc.retry_after_seconds)
        log.warning("SendBird 429 for message_id=%s: rescheduled in %.1f s (reschedule %d)",
                    reply.message_id, exc.retry_after_seconds, again.reschedules)
        return "rescheduled"
