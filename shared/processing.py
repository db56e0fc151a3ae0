"""How every queue-triggered stage treats failures: retry, or poison with a reason.

:func:`run_queue_stage` decodes the message body into its model and runs the
stage's work. On failure:

- :class:`~shared.errors.PermanentError` (including an undecodable message or an
  unknown version): a :class:`~shared.models.PoisonRecord` with the reason goes to
  ``<queue>-poison`` at once and the original message is completed.
- any other exception, before the last attempt: logged and re-raised, so the
  host makes the message visible again after ``visibilityTimeout``.
- on the last attempt (dequeue count >= ``maxDequeueCount`` of host.json): poisoned
  with the last error as the reason, instead of the host moving it without one.

``on_poison`` (e.g. send the user an apology) runs after a decodable message is poisoned.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Callable, TypeVar

from shared import timing
from shared.clients.queues import QueueSender
from shared.errors import GatewayError, PermanentError, RateLimited
from shared.models import PoisonRecord, QueueMessageBase, decode, now_ms
from shared.telemetry import DISABLED, Telemetry

log = logging.getLogger(__name__)
M = TypeVar("M", bound=QueueMessageBase)
R = TypeVar("R")


def run_queue_stage(body: bytes, *, dequeue_count: int, queue: str, model: type[M], work: Callable[[M], R],
                    queues: QueueSender, max_dequeue_count: int,
                    on_poison: Callable[[M, str], None] | None = None,
                    telemetry: Telemetry = DISABLED, stage: str = "", route: str | None = None,
                    retry_budget_seconds: float = 0) -> R | None:
    """Run ``work(decode(body, model))``; returns its result, or None when the message was poisoned.

    ``dequeue_count`` is 1 on the first attempt. Re-raises transient failures before the last attempt.
    When the result is the next stage's message, a :class:`~shared.models.Hop` with this stage's queue
    wait, duration and outbound-call times is appended to it, and it carries this stage's ``traceparent``.
    Telemetry: one request named ``stage`` continuing the message's trace; metrics ``stage_latency_ms``,
    ``queue_wait_ms``, ``retry_count``, ``poison_count``; event ``MessagePoisoned``.
    """
    with ExitStack() as redaction:
        return _run(body, dequeue_count, queue, model, work, queues, max_dequeue_count, on_poison, telemetry,
                    stage or queue, route, retry_budget_seconds, redaction)


def _run(body: bytes, dequeue_count: int, queue: str, model: type[M], work: Callable[[M], R], queues: QueueSender,
         max_dequeue_count: int, on_poison: Callable[[M, str], None] | None, telemetry: Telemetry, stage: str,
         route: str | None, retry_budget_seconds: float, redaction: ExitStack) -> R | None:
    msg: M | None = None
    started = now_ms()
    try:
        msg = decode(body, model)
        # the raw ids and text of this message are scrubbed from every telemetry item until the stage ends
        redaction.enter_context(telemetry.sensitive(user_id=msg.user_id, channel_url=msg.channel_url,
                                                    text=getattr(msg, "text", None)))
        with telemetry.stage(stage, msg.traceparent, correlation_id=msg.correlation_id, message_id=msg.message_id,
                             queue=queue, dequeue_count=dequeue_count, route=route,
                             queue_wait_ms=started - msg.enqueued_at_ms) as span, timing.scope() as dependency_ms:
            result = work(msg)
        if isinstance(result, QueueMessageBase):
            result = result.with_hop(queue, started - msg.enqueued_at_ms, started, dependency_ms, span.traceparent)
        telemetry.metric("stage_latency_ms", now_ms() - started, stage=stage, route=route)
        telemetry.metric("queue_wait_ms", max(0, started - msg.enqueued_at_ms), stage=stage, route=route)
        return result
    except PermanentError as exc:
        reason, error_type = exc.reason, type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - every failure is either retried or poisoned
        reason = exc.reason if isinstance(exc, GatewayError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, RateLimited) and msg is not None:
            age = (now_ms() - msg.received_at_ms) / 1000
            if age + exc.retry_after_seconds <= retry_budget_seconds:
                # wait without using up an attempt: the same message again, invisible for the asked delay
                queues.send(queue, body.decode("utf-8") if isinstance(body, bytes) else body,
                            delay_seconds=exc.retry_after_seconds)
                log.warning("%s: %s; message_id=%s re-queued in %.0f s (age %.0f s of a %.0f s budget)", queue,
                            reason, msg.message_id, exc.retry_after_seconds, age, retry_budget_seconds)
                telemetry.metric("retry_count", 1, stage=stage, route=route)
                return None
        if dequeue_count < max_dequeue_count:
            logger = log.warning if isinstance(exc, GatewayError) else log.exception
            logger("%s attempt %d/%d failed (message_id=%s, correlation_id=%s): %s; will retry", queue,
                   dequeue_count, max_dequeue_count, getattr(msg, "message_id", None),
                   getattr(msg, "correlation_id", None), reason)
            telemetry.metric("retry_count", 1, stage=stage, route=route)
            raise
        reason, error_type = f"failed {dequeue_count} times; last error: {reason}", type(exc).__name__
    queues.send_poison(PoisonRecord(
        source_queue=queue, reason=reason, error_type=error_type, dequeue_count=dequeue_count,
        poisoned_at_ms=now_ms(), correlation_id=getattr(msg, "correlation_id", None),
        message_id=getattr(msg, "message_id", None),
        original=body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body),
    ))
    telemetry.metric("poison_count", 1, queue=queue)
    telemetry.event("MessagePoisoned", {
        "queue": queue, "stage": stage, "reason": reason, "error_type": error_type,
        "correlation_id": getattr(msg, "correlation_id", None), "message_id": getattr(msg, "message_id", None),
        "user_id": getattr(msg, "user_id", None), "channel_url": getattr(msg, "channel_url", None),
    }, {"dequeue_count": dequeue_count}, traceparent=getattr(msg, "traceparent", None))
    if msg is not None and on_poison is not None:
        try:
            on_poison(msg, reason)
        except Exception:  # noqa: BLE001 - the poison record is written; an apology failure must not undo it
            log.exception("on_poison handler failed for message_id=%s", msg.message_id)
    return None
