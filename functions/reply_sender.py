"""Queue trigger on ``chat-reply``: the reply sender.

Decodes a :class:`~shared.models.ReplyMessage` and runs
:func:`shared.reply_stage.deliver` under the poison policy. A 429 reschedules
the reply on the same queue with a delay (SDK send), so the function returns at once.
A poisoned reply marks its turn failed, so the user's later messages are not held back.
"""

from __future__ import annotations

import azure.functions as func

from functions.common import run_stage
from shared import services
from shared.models import REPLY_QUEUE, STORAGE_CONNECTION, ReplyMessage
from shared.reply_stage import deliver, mark_failed

bp = func.Blueprint()


@bp.function_name("reply_sender")
@bp.queue_trigger(arg_name="msg", queue_name=REPLY_QUEUE, connection=STORAGE_CONNECTION)
def reply_sender(msg: func.QueueMessage) -> None:
    run_stage(
        msg, queue=REPLY_QUEUE, model=ReplyMessage, stage="reply_sender",
        work=lambda m: deliver(m, sendbird=services.sendbird(), queues=services.queues(),
                               state_store=services.state_store(), settings=services.settings(),
                               catalog=services.catalog(), telemetry=services.telemetry()),
        on_poison=lambda m, reason: mark_failed(m, services.state_store(), services.settings()),
    )
