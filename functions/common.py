"""What every queue-triggered function shares: the stage runner wired to this worker's services."""

from __future__ import annotations

from typing import Callable, TypeVar

import azure.functions as func

from shared import services
from shared.handlers import apology_reply
from shared.models import REPLY_QUEUE, InboundMessage, QueueMessageBase, RoutedMessage
from shared.processing import run_queue_stage

M = TypeVar("M", bound=QueueMessageBase)
R = TypeVar("R")


def apologize(msg: InboundMessage | RoutedMessage, reason: str) -> None:
    """Poison hook of the intent and handler stages: the user gets an apology (never silence)."""
    services.queues().send(REPLY_QUEUE, apology_reply(msg, services.catalog(), services.settings()).to_queue_text())


def run_stage(msg: func.QueueMessage, *, queue: str, model: type[M], work: Callable[[M], R], stage: str,
              route: str | None = None, on_poison: Callable[[M, str], None] | None = None) -> R | None:
    """:func:`shared.processing.run_queue_stage` for a trigger message, with host.json's maxDequeueCount,
    the retry budget, the queue client and telemetry of this worker."""
    cfg = services.config()
    return run_queue_stage(
        msg.get_body(), dequeue_count=msg.dequeue_count or 1, queue=queue, model=model, work=work,
        queues=services.queues(), max_dequeue_count=cfg.host.max_dequeue_count,
        retry_budget_seconds=cfg.settings.retry_budget_seconds, on_poison=on_poison,
        telemetry=services.telemetry(), stage=stage, route=route,
    )
