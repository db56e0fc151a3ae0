"""Queue trigger on ``chat-reply``: the reply sender.

Decodes a :class:`~shared.models.ReplyMessage` and runs :func:`shared.reply_sender.deliver` under the poison
policy. A 429 reschedules the reply on the same queue with a delay (SDK send), so the function returns at once.
A poisoned reply marks its turn failed, so the user's later messages are not held back.
"""

from __future__ import annotations

import azure.functions as func

from functions.common import run_stage
from shared import bootstrap
from shared.models import REPLY_QUEUE, STORAGE_CONNECTION, ReplyMessage
from shared.processing import QueueStage
from shared.reply_sender import deliver, mark_failed
from shared.telemetry import REPLY_SENDER

bp = func.Blueprint()
STAGE = QueueStage(REPLY_QUEUE, ReplyMessage, REPLY_SENDER,
                   on_poison=lambda m, reason: mark_failed(m, bootstrap.root().state_store))


@bp.function_name("reply_sender")
@bp.queue_trigger(arg_name="msg", queue_name=REPLY_QUEUE, connection=STORAGE_CONNECTION)
def reply_sender(msg: func.QueueMessage) -> None:
    run_stage(msg, STAGE, lambda m: deliver(m, bootstrap.root().reply_sender()))
