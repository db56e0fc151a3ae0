"""HTTP trigger ``POST /api/sendbird/webhook``: SendBird webhook intake.

Translates the HTTP request to :func:`shared.intake.handle_webhook` and its decision back to an HTTP response plus
(at most) one queue message on ``chat-inbound`` through an output binding. Auth level anonymous: the
``x-sendbird-signature`` HMAC is the authentication.
"""

from __future__ import annotations

import json

import azure.functions as func

from shared import bootstrap
from shared.intake import handle_webhook
from shared.models import INBOUND_QUEUE, STORAGE_CONNECTION
from shared.telemetry import INTAKE

bp = func.Blueprint()


@bp.function_name("sendbird_webhook")
@bp.route(route="sendbird/webhook", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@bp.queue_output(arg_name="inbound", queue_name=INBOUND_QUEUE, connection=STORAGE_CONNECTION)
def sendbird_webhook(req: func.HttpRequest, inbound: func.Out[bytes]) -> func.HttpResponse:
    svc = bootstrap.root()
    with svc.telemetry.stage(INTAKE, None, route="sendbird/webhook") as span:
        decision = handle_webhook(req.get_body(), req.headers, svc.settings, telemetry=svc.telemetry,
                                  traceparent=span.traceparent)
        span.set_status_code(decision.status)
    if decision.inbound is not None:
        inbound.set(decision.inbound.to_queue_bytes())
    return func.HttpResponse(json.dumps(decision.body, ensure_ascii=False), status_code=decision.status,
                             mimetype="application/json", charset="utf-8")
