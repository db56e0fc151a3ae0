"""Messages the Functions host moved to a poison queue: recorded with a reason, and the user answered.

The app's own policy (:mod:`shared.processing`) poisons a message with a reason and an apology whenever the
function is still running to do it. When it is not, the **host** moves the raw body to ``<queue>-poison``
with no reason: the function failed on its last attempt because the worker process crashed, or because
``functionTimeout`` was reached, which restarts the language worker and fails every invocation in flight in
it, not only the slow one (``../shared/reference/functions-host-rules.md``; azure-functions-host
``FunctionInvocationDispatcher`` restart on timeout, azure-sdk-for-net ``QueueProcessor``
"Message has reached MaxDequeueCount ... Moving message to queue"). Without more, such a user is never answered.

A queue trigger on every poison queue (``functions/poison.py``) hands each such body to
:func:`handle_host_moved`, which

- writes a :class:`~shared.models.PoisonRecord` (reason :data:`HOST_MOVED_REASON`) to
  ``<queue>-poison-records``, where the app keeps its own records (listing and replay find both);
- for a user's message (``chat-inbound``, ``route-*``): returns the apology reply, which the trigger writes
  to ``chat-reply``; the reply sender shows at most one apology per message (``dedup_id``
  ``apology-<message_id>``, and none after a real answer), so a redelivered poison message cannot apologise twice;
- for a reply (``chat-reply``): marks its turn failed, as the reply stage's own poison hook does, so the
  user's later messages are not held back, and returns the apology for its message (the reply never reached the
  user: the worker died sending it; an apology that was itself host-moved gets none, so nothing loops);
- for an app :class:`~shared.models.PoisonRecord` found there (written by a build before records had their own
  queue): moves it to the records queue as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import ValidationError

from shared.branch_handlers import apology_reply
from shared.catalog import ResponseCatalog
from shared.errors import PermanentError
from shared.models import (
    INBOUND_QUEUE, REPLY_QUEUE, InboundMessage, PoisonRecord, QueueMessageBase, ReplyMessage, RoutedMessage, decode,
    now_ms,
)
from shared.ports import QueuePort, StateStore, TelemetryPort
from shared.reply_sender import mark_failed
from shared.routes import routes
from shared.settings import Settings
from shared.state import APOLOGY_KEY
from shared.telemetry import DISABLED

log = logging.getLogger(__name__)

#: The ``stage`` dimension of the events of the poison triggers.
DEAD_LETTER_STAGE = "dead_letters"
#: The reason recorded for a message the host moved without the app's record.
HOST_MOVED_REASON = ("moved to the poison queue by the Functions host after maxDequeueCount: the function crashed or "
                     "timed out on its last attempt (functionTimeout restarts the worker process)")
def queue_models() -> dict[str, type[QueueMessageBase]]:
    """The model each stage queue carries (inbound, one queue per registered route, reply)."""
    return {INBOUND_QUEUE: InboundMessage, **{q: RoutedMessage for q in routes().queues()}, REPLY_QUEUE: ReplyMessage}


@dataclass(frozen=True)
class Recovery:
    """What to do about one host-moved body: the record to keep, and the apology or failed reply, if any."""

    record: PoisonRecord
    apology: ReplyMessage | None = None
    failed_reply: ReplyMessage | None = None
    message: QueueMessageBase | None = None


def recover(body: str, source_queue: str, *, catalog: ResponseCatalog, settings: Settings,
            max_dequeue_count: int) -> Recovery:
    """Decide what a body the host moved from ``source_queue`` means (pure; see module docstring)."""
    try:
        return Recovery(PoisonRecord.model_validate_json(body))  # an app record in the host's queue (older build)
    except (ValidationError, ValueError, RecursionError):
        pass
    model = queue_models()[source_queue]
    try:
        msg = decode(body, model)
    except PermanentError as exc:
        return Recovery(_record(source_queue, f"{HOST_MOVED_REASON}; the body is not readable: {exc.reason}",
                                body, max_dequeue_count))
    record = _record(source_queue, HOST_MOVED_REASON, body, max_dequeue_count, msg)
    if isinstance(msg, ReplyMessage):
        apology = None if msg.reply_key == APOLOGY_KEY else apology_reply(msg, catalog, settings)
        return Recovery(record, apology=apology, failed_reply=msg, message=msg)
    assert isinstance(msg, (InboundMessage, RoutedMessage))
    return Recovery(record, apology=apology_reply(msg, catalog, settings), message=msg)


@dataclass(frozen=True)
class DeadLetterDeps:
    """What the poison triggers need."""

    queues: QueuePort
    state_store: StateStore
    catalog: ResponseCatalog
    settings: Settings
    max_dequeue_count: int
    telemetry: TelemetryPort = DISABLED


def handle_host_moved(body: str, source_queue: str, deps: DeadLetterDeps) -> ReplyMessage | None:
    """Record a body the host moved from ``source_queue`` and answer for it; returns the apology to enqueue
    on ``chat-reply`` (None when there is none). Idempotent for the user (see module docstring).

    Errors: :class:`~shared.errors.TransientError` from Storage or the state store (the trigger retries).
    Telemetry: event ``MessagePoisoned`` (``error_type`` ``HostMovedToPoison``), metric ``poison_count``.
    """
    r = recover(body, source_queue, catalog=deps.catalog, settings=deps.settings,
                max_dequeue_count=deps.max_dequeue_count)
    msg, telemetry = r.message, deps.telemetry
    with telemetry.sensitive(user_id=getattr(msg, "user_id", None), channel_url=getattr(msg, "channel_url", None),
                             text=getattr(msg, "text", None)):
        deps.queues.send_poison(r.record)
        if r.failed_reply is not None:
            mark_failed(r.failed_reply, deps.state_store)
        if msg is not None:
            telemetry.metric("poison_count", 1, queue=source_queue)
            telemetry.event("MessagePoisoned", {
                "queue": source_queue, "stage": DEAD_LETTER_STAGE, "reason": r.record.reason,
                "error_type": r.record.error_type, "correlation_id": msg.correlation_id,
                "message_id": msg.message_id, "user_id": msg.user_id, "channel_url": msg.channel_url,
            }, {"dequeue_count": r.record.dequeue_count}, traceparent=msg.traceparent)
    return r.apology


def _record(source_queue: str, reason: str, body: str, dequeue_count: int,
            msg: QueueMessageBase | None = None) -> PoisonRecord:
    return PoisonRecord(source_queue=source_queue, reason=reason, error_type="HostMovedToPoison",
                        dequeue_count=dequeue_count, poisoned_at_ms=now_ms(),
                        correlation_id=getattr(msg, "correlation_id", None),
                        message_id=getattr(msg, "message_id", None), original=body)
