"""What every queue-triggered function shares: running a stage under the retry/poison policy of this worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import azure.functions as func

from shared import bootstrap
from shared.branch_handlers import apology_reply
from shared.models import REPLY_QUEUE, InboundMessage, QueueMessageBase, RoutedMessage
from shared.processing import QueueStage, run_queue_stage

M = TypeVar("M", bound=QueueMessageBase)
R = TypeVar("R")


def apologize(msg: InboundMessage | RoutedMessage, reason: str) -> None:
    """Poison hook of the intent and handler stages: the user gets an apology (never silence)."""
    svc = bootstrap.root()
    svc.queues.send(REPLY_QUEUE, apology_reply(msg, svc.catalog, svc.settings).to_queue_text())


def run_stage(msg: func.QueueMessage, stage: QueueStage[M], work: Callable[[M], R]) -> R | None:
    """:func:`shared.processing.run_queue_stage` for a trigger message with this worker's retry policy."""
    return run_queue_stage(msg.get_body(), msg.dequeue_count or 1, stage, work, bootstrap.root().retry_policy())
