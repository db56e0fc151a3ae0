"""Queue triggers on the host's poison queues (``<queue>-poison``), one per stage queue.

The host moves a message there, raw and without a reason, when the function failed on its last attempt without
the app's own poison policy having run (a worker crash, or ``functionTimeout``). Each trigger hands the body to
:func:`shared.dead_letters.handle_host_moved` (record with the reason, reply marked failed) and writes the apology
it returns to ``chat-reply`` through an output binding.
"""

from __future__ import annotations

import azure.functions as func

from shared import bootstrap
from shared.dead_letters import handle_host_moved, queue_models
from shared.models import REPLY_QUEUE, STORAGE_CONNECTION, poison_queue_name

bp = func.Blueprint()


def _register(source_queue: str) -> None:
    @bp.function_name(f"poison_{source_queue.replace('-', '_')}")
    @bp.queue_trigger(arg_name="msg", queue_name=poison_queue_name(source_queue), connection=STORAGE_CONNECTION)
    @bp.queue_output(arg_name="apology", queue_name=REPLY_QUEUE, connection=STORAGE_CONNECTION)
    def poison_trigger(msg: func.QueueMessage, apology: func.Out[bytes]) -> None:
        answer = handle_host_moved(msg.get_body().decode("utf-8", errors="replace"), source_queue,
                                   bootstrap.root().dead_letters())
        if answer is not None:
            apology.set(answer.to_queue_bytes())


for _queue in queue_models():
    _register(_queue)
