"""Queue trigger on ``review-capture``: the review stage (off the chat's hot path).

Decodes a :class:`~shared.models.ReviewCapture` the intent stage wrote and runs :func:`shared.review.record`
(one optimistic update of the deduplicated review item) under the poison policy. It sends nothing on: the bot
team reads the inbox in the console.
"""

from __future__ import annotations

import azure.functions as func

from functions.common import run_stage
from shared import bootstrap
from shared.models import REVIEW_QUEUE, STORAGE_CONNECTION, ReviewCapture
from shared.processing import QueueStage
from shared.review import record
from shared.telemetry import REVIEW_STAGE

STAGE = QueueStage(REVIEW_QUEUE, ReviewCapture, REVIEW_STAGE)

bp = func.Blueprint()


@bp.function_name("review_capture")
@bp.queue_trigger(arg_name="msg", queue_name=REVIEW_QUEUE, connection=STORAGE_CONNECTION)
def review_capture(msg: func.QueueMessage) -> None:
    run_stage(msg, STAGE, lambda m: record(m, bootstrap.root().review()))
