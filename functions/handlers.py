"""Queue triggers on ``route-<route>``: one branch handler function per route.

Each function decodes a :class:`~shared.models.RoutedMessage`, runs
:func:`shared.handlers.handle` (the route's business logic and state update)
under the poison policy, and writes the reply to ``chat-reply`` through an
output binding. The functions are registered in a loop because they differ only
in their queue; the logic per route is in :data:`shared.handlers.HANDLERS`.
"""

from __future__ import annotations

import azure.functions as func

from shared import services
from shared.handlers import apology_reply, handle
from shared.models import REPLY_QUEUE, STORAGE_CONNECTION, Route, RoutedMessage
from shared.processing import run_queue_stage

bp = func.Blueprint()


def _apologize(msg: RoutedMessage, reason: str) -> None:
    services.queues().send(REPLY_QUEUE, apology_reply(msg, services.catalog(), services.settings()).to_queue_text())


def _requeue(msg: RoutedMessage, delay_seconds: float) -> None:
    services.queues().send(msg.route.queue, msg.to_queue_text(), delay_seconds=delay_seconds)


def process_routed(route: Route, msg: func.QueueMessage, reply: func.Out[str]) -> None:
    """Body shared by every branch handler function."""
    cfg = services.config()
    answer = run_queue_stage(
        msg.get_body(), dequeue_count=msg.dequeue_count or 1, queue=route.queue, model=RoutedMessage,
        work=lambda m: handle(m, state_store=services.state_store(), catalog=services.catalog(),
                              settings=cfg.settings, reschedule=_requeue, telemetry=services.telemetry()),
        queues=services.queues(), max_dequeue_count=cfg.host.max_dequeue_count,
        retry_budget_seconds=cfg.settings.retry_budget_seconds, on_poison=_apologize,
        telemetry=services.telemetry(), stage="branch_handler", route=route.value,
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
