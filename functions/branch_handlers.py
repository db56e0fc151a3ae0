"""Queue triggers on ``route-<route>``: one branch handler function per registered route.

Each function decodes a :class:`~shared.models.RoutedMessage`, runs :func:`shared.branch_handlers.handle` (the
route's business logic and state update) under the poison policy, and writes the reply to ``chat-reply`` through
an output binding. The functions are registered in a loop over the route registry (:mod:`shared.routes`): they
differ only in their queue; the logic of each route is its registry entry's handler.
"""

from __future__ import annotations

import azure.functions as func

from functions.common import apologize, run_stage
from shared import bootstrap
from shared.branch_handlers import handle
from shared.models import REPLY_QUEUE, STORAGE_CONNECTION, RoutedMessage
from shared.processing import QueueStage
from shared.routes import RouteSpec, routes
from shared.telemetry import BRANCH_HANDLER

bp = func.Blueprint()


def process_routed(route: RouteSpec, msg: func.QueueMessage, reply: func.Out[bytes]) -> None:
    """Body of every branch handler function."""
    stage = QueueStage(route.queue, RoutedMessage, BRANCH_HANDLER, route=route.name, on_poison=apologize)
    answer = run_stage(msg, stage, lambda m: handle(m, bootstrap.root().branch()))
    if answer is not None:
        reply.set(answer.to_queue_bytes())


def _register(route: RouteSpec) -> None:
    @bp.function_name(route.function_name)
    @bp.queue_trigger(arg_name="msg", queue_name=route.queue, connection=STORAGE_CONNECTION)
    @bp.queue_output(arg_name="reply", queue_name=REPLY_QUEUE, connection=STORAGE_CONNECTION)
    def branch_handler(msg: func.QueueMessage, reply: func.Out[bytes]) -> None:
        process_routed(route, msg, reply)


for _route in routes():
    _register(_route)
