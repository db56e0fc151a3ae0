"""Queue triggers on ``route-<route>``: one branch handler function per route.

Each function decodes a :class:`~shared.models.RoutedMessage`, runs
:func:`shared.handlers.handle` (the route's business logic and state update)
under the poison policy, and writes the reply to ``chat-reply`` through an
output binding. The functions are registered in a loop because they differ only
in their queue; the logic per route is in :data:`shared.handlers.HANDLERS`.
"""

from __future__ import annotations

import azure.functions as func

from functions.common import apologize, run_stage
from shared import services
from shared.handlers import handle
from shared.models import REPLY_QUEUE, STORAGE_CONNECTION, Route, RoutedMessage

bp = func.Blueprint()


def _requeue(msg: RoutedMessage, delay_seconds: float) -> None:
    services.queues().send(msg.route.queue, msg.to_queue_text(), delay_seconds=delay_seconds)


def process_routed(route: Route, msg: func.QueueMessage, reply: func.Out[str]) -> None:
    """Body shared by every branch handler function."""
    answer = run_stage(
        msg, queue=route.queue, model=RoutedMessage, stage="branch_handler", route=route.value, on_poison=apologize,
        work=lambda m: handle(m, state_store=services.state_store(), catalog=services.catalog(),
                              settings=services.settings(), reschedule=_requeue, telemetry=services.telemetry()),
    )
    if answer is not None:
        reply.set(answer.to_queue_text())


def _register(route: Route) -> None:
    @bp.function_name(f"route_{route.value}")
    @bp.queue_trigger(arg_name="msg", queue_name=route.queue, connection=STORAGE_CONNECTION)
    @bp.queue_output(arg_name="reply", queue_name=REPLY_QUEUE, connection=STORAGE_CONNECTION)
    def branch_handler(msg: func.QueueMessage, reply: func.Out[str]) -> None:
        process_routed(route, msg, reply)


for _route in Route:
    _register(_route)
