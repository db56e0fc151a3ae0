"""Queue trigger on ``chat-reply``: the reply sender.

Decodes a :class:`~shared.models.ReplyMessage` and runs
:func:`shared.reply_stage.deliver` under the poison policy. A 429 reschedules
the reply on the same queue with a delay (SDK send), so the function returns at once.
A poisoned reply marks its turn failed, so the user's later messages are not held back.
"""

from __future__ import annotations

import azure.functions as func

from shared import services
from shared.models import REPLY_QUEUE, STORAGE_CONNECTION, ReplyMessage
from shared.processing import run_queue_stage
from shared.reply_stage import deliver, mark_failed

bp = func.Blueprint()


@bp.function_name("reply_sender")
@bp.queue_trigger(arg_name="msg", queue_name=REPLY_QUEUE, connection=STORAGE_CONNECTION)
def reply_sender(msg: func.QueueMessage) -> None:
    cfg = services.config()
    run_queue_stage(
        msg.get_body(), dequeue_count=msg.dequeue_count or 1, queue=REPLY_QUEUE, model=ReplyMessage,
        work=lambda m: deliver(m, sendbird=services.sendbird(), queues=services.queues(),
                               state_store=services.state_store(), settings=cfg.settings,
                               telemetry=services.telemetry()),
        queues=services.queues(), max_dequeue_count=cfg.host.max_dequeue_count,
        retry_budget_seconds=cfg.settings.retry_budget_seconds,
        on_poison=lambda m, reason: mark_failed(m, services.state_store(), cfg.settings),
        telemetry=services.telemetry(), stage="reply_sender",
    )
