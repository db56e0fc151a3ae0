"""How every queue-triggered stage treats failures: retry, or poison with a reason.

:func:`run_queue_stage` decodes the message body into its model and runs the stage's work. On failure:

- :class:`~shared.errors.PermanentError` (including an undecodable message or an unknown version): a
  :class:`~shared.models.PoisonRecord` with the reason is kept in ``<queue>-poison-records`` at once and the
  original message is completed.
- :class:`~shared.errors.RateLimited` (an open circuit): the same message is re-queued invisible for the asked
  delay, without using up an attempt, while the message is younger than ``RETRY_BUDGET_SECONDS``.
- any other exception, before the last attempt: logged and re-raised, so the host makes the message visible
  again after ``visibilityTimeout``.
- on the last attempt (dequeue count >= ``maxDequeueCount`` of host.json and its app-setting override): poisoned
  with the last error as the reason, instead of the host moving it without one.

``on_poison`` (e.g. send the user an apology) runs after a decodable message is poisoned. While the stage runs,
the message's raw ids and text are registered with telemetry, which scrubs them from everything it sends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Generic, TypeVar

from shared import timing
from shared.errors import GatewayError, PermanentError, RateLimited
from shared.models import PoisonRecord, QueueMessageBase, decode, now_ms
from shared.ports import QueuePort, TelemetryPort
from shared.telemetry import DISABLED

log = logging.getLogger(__name__)
M = TypeVar("M", bound=QueueMessageBase)
R = TypeVar("R")

_DEQUEUE_COUNT: ContextVar[int | None] = ContextVar("dequeue_count", default=None)


def dequeue_count() -> int | None:
    """The dequeue count of the queue message whose stage runs in this context (1: its first delivery, so no other
    copy of it was handed out before), or None outside :func:`run_queue_stage`: the message was not delivered by a
    queue but handed over in process (the benchmark's monolith, tests), so it is the only copy."""
    return _DEQUEUE_COUNT.get()


@contextmanager
def delivered(count: int) -> Iterator[None]:
    """Run the block as the stage of a queue message handed out ``count`` times (1: first delivery), as
    :func:`run_queue_stage` does; :func:`dequeue_count` returns ``count`` inside."""
    token = _DEQUEUE_COUNT.set(count)
    try:
        yield
    finally:
        _DEQUEUE_COUNT.reset(token)


@dataclass(frozen=True)
class QueueStage(Generic[M]):
    """One queue-triggered stage: the queue it consumes, the model of its messages, its telemetry name (a request
    name of :data:`shared.telemetry.STAGES`), its route (branch handlers) and what to do when a message is poisoned."""

    queue: str
    model: type[M]
    name: str
    route: str | None = None
    on_poison: Callable[[M, str], None] | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """The worker's side of the policy: where poison records go, telemetry, and the host's limits."""

    queues: QueuePort
    max_dequeue_count: int
    retry_budget_seconds: float = 0
    telemetry: TelemetryPort = DISABLED


def run_queue_stage(body: bytes | str, dequeue_count: int, stage: QueueStage[M], work: Callable[[M], R],
                    policy: RetryPolicy) -> R | None:
    """Run ``work(decode(body, stage.model))``; returns its result, or None when the message was poisoned or
    re-queued. ``dequeue_count`` is 1 on the first attempt. Re-raises transient failures before the last attempt.

    When the result is the next stage's message, a :class:`~shared.models.Hop` with this stage's queue wait,
    duration and outbound-call times is appended to it, and it carries this stage's ``traceparent``.
    Telemetry: one request named ``stage.name`` continuing the message's trace; metrics ``stage_latency_ms``,
    ``queue_wait_ms``, ``retry_count``, ``poison_count``; event ``MessagePoisoned``.
    """
    started = now_ms()
    try:
        msg = decode(body, stage.model)
    except PermanentError as exc:
        _poison(body, None, exc.reason, type(exc).__name__, dequeue_count, stage, policy)
        return None
    with policy.telemetry.sensitive(user_id=msg.user_id, channel_url=msg.channel_url,
                                    text=getattr(msg, "text", None)):
        try:
            with delivered(dequeue_count):
                return _traced(msg, dequeue_count, started, stage, work, policy.telemetry)
        except Exception as exc:  # noqa: BLE001 - every failure is either retried or poisoned
            _failed(exc, body, msg, dequeue_count, stage, policy)
            return None


def _traced(msg: M, dequeue_count: int, started: int, stage: QueueStage[M], work: Callable[[M], R],
            telemetry: TelemetryPort) -> R:
    waited = started - msg.enqueued_at_ms
    with telemetry.stage(stage.name, msg.traceparent, correlation_id=msg.correlation_id, message_id=msg.message_id,
                         queue=stage.queue, dequeue_count=dequeue_count, route=stage.route,
                         queue_wait_ms=waited) as span, timing.scope() as dependency_ms:
        result = work(msg)
    if isinstance(result, QueueMessageBase) or callable(getattr(result, "with_hop", None)):
        # the next stage's message (or several, e.g. the intent stage's StageResult) carries this stage's hop
        result = result.with_hop(stage.queue, waited, started, dependency_ms, span.traceparent)  # type: ignore[attr-defined]
    telemetry.metric("stage_latency_ms", now_ms() - started, stage=stage.name, route=stage.route)
    telemetry.metric("queue_wait_ms", max(0, waited), stage=stage.name, route=stage.route)
    return result


def _failed(exc: Exception, body: bytes | str, msg: M, dequeue_count: int, stage: QueueStage[M],
            policy: RetryPolicy) -> None:
    """Re-queue, re-raise (retry) or poison after ``exc``; returns None when the message was handled."""
    if isinstance(exc, PermanentError):
        _poison(body, msg, exc.reason, type(exc).__name__, dequeue_count, stage, policy)
        return None
    reason = exc.reason if isinstance(exc, GatewayError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, RateLimited) and _requeue_within_budget(exc, body, msg, stage, policy, reason):
        return None
    if dequeue_count < policy.max_dequeue_count:
        logger = log.warning if isinstance(exc, GatewayError) else log.exception
        logger("%s attempt %d/%d failed (message_id=%s, correlation_id=%s): %s; will retry", stage.queue,
               dequeue_count, policy.max_dequeue_count, msg.message_id, msg.correlation_id, reason)
        policy.telemetry.metric("retry_count", 1, stage=stage.name, route=stage.route)
        raise exc
    _poison(body, msg, f"failed {dequeue_count} times; last error: {reason}", type(exc).__name__, dequeue_count,
            stage, policy)
    return None


def _requeue_within_budget(exc: RateLimited, body: bytes | str, msg: M, stage: QueueStage[M], policy: RetryPolicy,
                           reason: str) -> bool:
    """Wait without using up an attempt: the same message again, invisible for the asked delay, while the
    message's age plus the delay stays within the retry budget."""
    age = (now_ms() - msg.received_at_ms) / 1000
    if age + exc.retry_after_seconds > policy.retry_budget_seconds:
        return False
    policy.queues.send(stage.queue, body.decode("utf-8") if isinstance(body, bytes) else body,
                       delay_seconds=exc.retry_after_seconds)
    log.warning("%s: %s; message_id=%s re-queued in %.0f s (age %.0f s of a %.0f s budget)", stage.queue, reason,
                msg.message_id, exc.retry_after_seconds, age, policy.retry_budget_seconds)
    policy.telemetry.metric("retry_count", 1, stage=stage.name, route=stage.route)
    return True


def _poison(body: bytes | str, msg: M | None, reason: str, error_type: str, dequeue_count: int,
            stage: QueueStage[M], policy: RetryPolicy) -> None:
    policy.queues.send_poison(PoisonRecord(
        source_queue=stage.queue, reason=reason, error_type=error_type, dequeue_count=dequeue_count,
        poisoned_at_ms=now_ms(), correlation_id=getattr(msg, "correlation_id", None),
        message_id=getattr(msg, "message_id", None),
        original=body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body),
    ))
    policy.telemetry.metric("poison_count", 1, queue=stage.queue)
    policy.telemetry.event("MessagePoisoned", {
        "queue": stage.queue, "stage": stage.name, "reason": reason, "error_type": error_type,
        "correlation_id": getattr(msg, "correlation_id", None), "message_id": getattr(msg, "message_id", None),
        "user_id": getattr(msg, "user_id", None), "channel_url": getattr(msg, "channel_url", None),
    }, {"dequeue_count": dequeue_count}, traceparent=getattr(msg, "traceparent", None))
    if msg is not None and stage.on_poison is not None:
        try:
            stage.on_poison(msg, reason)
        except Exception:  # noqa: BLE001 - the poison record is written; an apology failure must not undo it
            log.exception("on_poison handler failed for message_id=%s", msg.message_id)
