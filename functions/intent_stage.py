"""Queue trigger on ``chat-inbound``: the intent stage.

Decodes an :class:`~shared.models.InboundMessage`, runs
:func:`shared.intent_stage.classify` under the poison policy of
:func:`shared.processing.run_queue_stage`, and writes the routed message to the
output binding of its route's queue (one binding per route).
"""

from __future__ import annotations

import azure.functions as func

from functions.common import apologize, run_stage
from shared import services
from shared.intent_stage import classify
from shared.models import INBOUND_QUEUE, STORAGE_CONNECTION, InboundMessage, Route

bp = func.Blueprint()


@bp.function_name("intent_stage")
@bp.queue_trigger(arg_name="msg", queue_name=INBOUND_QUEUE, connection=STORAGE_CONNECTION)
@bp.queue_output(arg_name="to_greeting", queue_name=Route.GREETING.queue, connection=STORAGE_CONNECTION)
@bp.queue_output(arg_name="to_help", queue_name=Route.HELP.queue, connection=STORAGE_CONNECTION)
@bp.queue_output(arg_name="to_order_status", queue_name=Route.ORDER_STATUS.queue, connection=STORAGE_CONNECTION)
@bp.queue_output(arg_name="to_product_search", queue_name=Route.PRODUCT_SEARCH.queue, connection=STORAGE_CONNECTION)
@bp.queue_output(arg_name="to_handoff", queue_name=Route.HANDOFF.queue, connection=STORAGE_CONNECTION)
@bp.queue_output(arg_name="to_goodbye", queue_name=Route.GOODBYE.queue, connection=STORAGE_CONNECTION)
@bp.queue_output(arg_name="to_fallback", queue_name=Route.FALLBACK.queue, connection=STORAGE_CONNECTION)
@bp.queue_output(arg_name="to_unsupported", queue_name=Route.UNSUPPORTED.queue, connection=STORAGE_CONNECTION)
def intent_stage(msg: func.QueueMessage, to_greeting: func.Out[str], to_help: func.Out[str],
                 to_order_status: func.Out[str], to_product_search: func.Out[str], to_handoff: func.Out[str],
                 to_goodbye: func.Out[str], to_fallback: func.Out[str], to_unsupported: func.Out[str]) -> None:
    outputs = {
        Route.GREETING: to_greeting, Route.HELP: to_help, Route.ORDER_STATUS: to_order_status,
        Route.PRODUCT_SEARCH: to_product_search, Route.HANDOFF: to_handoff, Route.GOODBYE: to_goodbye,
        Route.FALLBACK: to_fallback, Route.UNSUPPORTED: to_unsupported,
    }
    routed = run_stage(
        msg, queue=INBOUND_QUEUE, model=InboundMessage, stage="intent_stage", on_poison=apologize,
        work=lambda m: classify(m, state_store=services.state_store(), intent_client=services.intent_client(),
                                settings=services.settings(), telemetry=services.telemetry()),
    )
    if routed is not None:
        outputs[routed.route].set(routed.to_queue_text())
