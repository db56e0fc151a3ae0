"""HTTP trigger ``POST /api/sendbird/webhook``: SendBird webhook intake.

Translates the HTTP request to :func:`shared.intake.handle_webhook` and its decision back to an HTTP response plus
(at most) one queue message on ``chat-inbound`` through an output binding. Auth level anonymous: the
``x-sendbird-signature`` HMAC is the authentication.

``async def`` on purpose: the Python worker runs an ``async`` function on its event loop and a plain one on its
thread pool of ``PYTHON_THREADPOOL_THREAD_COUNT`` threads (azure-functions-python-worker,
``azure_functions_worker/dispatcher.py``, ``_handle__invocation_request``: ``fi.is_async`` -> awaited on the loop,
else ``loop.run_in_executor(self._sync_call_tp, ...)``), the pool the queue functions share. A slow intent service
or handlers waiting for a user's earlier turn can hold every thread of that pool, and a sync intake would then wait
for one while SendBird waits for its answer (and re-sends after 5 s). The body does no I/O (signature check,
parsing, one output binding the host writes) and never awaits, so it runs to completion on the loop in ~1 ms and
nothing else interleaves with it. Measured with the pool cut to 24 threads, a 2 s model at 20 msg/s: intake
p50/p99 197/1422 ms as a sync function, 14/117 ms as this one (bench/README.md, "The webhook intake is async").
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
async def sendbird_webhook(req: func.HttpRequest, inbound: func.Out[bytes]) -> func.HttpResponse:
    svc = bootstrap.root()
    with svc.telemetry.stage(INTAKE, None, route="sendbird/webhook") as span:
        decision = handle_webhook(req.get_body(), req.headers, svc.settings, telemetry=svc.telemetry,
                                  traceparent=span.traceparent)
        span.set_status_code(decision.status)
    if decision.inbound is not None:
        inbound.set(decision.inbound.to_queue_bytes())
    return func.HttpResponse(json.dumps(decision.body, ensure_ascii=False), status_code=decision.status,
                             mimetype="application/json", charset="utf-8")
