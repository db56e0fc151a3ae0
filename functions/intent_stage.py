"""Queue trigger on ``chat-inbound``: the intent stage.

Decodes an :class:`~shared.models.InboundMessage`, runs :func:`shared.intent_stage.classify` under the poison policy
of :func:`shared.processing.run_queue_stage`, and writes the routed message to the output binding of its route's
queue. The output bindings are derived from the route registry (:mod:`shared.routes`): one ``to_<route>`` binding
per registered route, plus ``to_review`` (queue ``review-capture``) for the review capture
:func:`shared.intent_stage.run` returns for a message the bot did not understand well. Because the Python worker binds parameters by name (every parameter must have a binding and
vice versa), the function's signature is generated to list exactly those bindings (``__signature__``, which
``inspect.signature`` and therefore the worker and the host's indexing read).
"""

from __future__ import annotations

import inspect
from typing import Any

import azure.functions as func

from functions.common import apologize, run_stage
from shared import bootstrap
from shared.intent_stage import run
from shared.models import INBOUND_QUEUE, REVIEW_QUEUE, STORAGE_CONNECTION, InboundMessage
from shared.processing import QueueStage
from shared.routes import routes
from shared.telemetry import INTENT_STAGE

STAGE = QueueStage(INBOUND_QUEUE, InboundMessage, INTENT_STAGE, on_poison=apologize)
#: The output binding of the review capture.
REVIEW_BINDING = "to_review"


def intent_stage(msg: func.QueueMessage, **outputs: func.Out[bytes]) -> None:
    result = run_stage(msg, STAGE, lambda m: run(m, bootstrap.root().intent_stage()))
    if result is None:
        return
    if result.routed is not None:
        outputs[routes().get(result.routed.route).binding].set(result.routed.to_queue_bytes())
    if result.review is not None:
        outputs[REVIEW_BINDING].set(result.review.to_queue_bytes())


def _with_route_outputs(fn: Any) -> Any:
    params = [inspect.Parameter("msg", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=func.QueueMessage)]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=func.Out[bytes])
               for name in [r.binding for r in routes()] + [REVIEW_BINDING]]
    fn.__signature__ = inspect.Signature(params, return_annotation=None)
    return fn


def _blueprint() -> func.Blueprint:
    bp = func.Blueprint()
    decorated: Any = _with_route_outputs(intent_stage)
    for r in routes():
        decorated = bp.queue_output(arg_name=r.binding, queue_name=r.queue, connection=STORAGE_CONNECTION)(decorated)
    decorated = bp.queue_output(arg_name=REVIEW_BINDING, queue_name=REVIEW_QUEUE,
                                connection=STORAGE_CONNECTION)(decorated)
    decorated = bp.queue_trigger(arg_name="msg", queue_name=INBOUND_QUEUE, connection=STORAGE_CONNECTION)(decorated)
    bp.function_name("intent_stage")(decorated)
    return bp


bp = _blueprint()
