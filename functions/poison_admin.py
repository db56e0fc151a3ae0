"""Operations HTTP functions (auth level FUNCTION: a function key is required on Azure).

Routes live under ``ops/``, not ``admin/``: the Functions host refuses any HTTP route whose first segment is
``admin`` or ``runtime`` ("The specified route conflicts with one or more built in routes";
azure-functions-host ``ScriptHost.ValidateHttpFunction``), because its own admin API lives there.

``GET /api/ops/poison``: poison messages of every stage with their reasons.
``POST /api/ops/poison/replay``: body :class:`shared.poison_admin.ReplayRequest` JSON,
e.g. ``{"correlation_ids": ["..."]}`` or ``{"queues": ["chat-inbound"], "all": true}``;
answers the replayed entries. Bad bodies get 400 with the reason.
"""

from __future__ import annotations

import json

import azure.functions as func
from pydantic import ValidationError

from shared import poison_admin, services

bp = func.Blueprint()


def _json(body: object, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, ensure_ascii=False), status_code=status,
                             mimetype="application/json", charset="utf-8")


@bp.function_name("ops_poison_list")
@bp.route(route="ops/poison", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def ops_poison_list(req: func.HttpRequest) -> func.HttpResponse:
    entries = poison_admin.list_poison(services.queues())
    redactor = services.telemetry().redactor  # original bodies follow TELEMETRY_PII_MODE
    return _json({"count": len(entries), "messages": [e.to_dict(redactor) for e in entries]})


@bp.function_name("ops_poison_replay")
@bp.route(route="ops/poison/replay", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def ops_poison_replay(req: func.HttpRequest) -> func.HttpResponse:
    try:
        request = poison_admin.ReplayRequest.model_validate_json(req.get_body() or b"{}")
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        return _json({"error": {"code": "invalid_request", "message": problems}}, 400)
    replayed = poison_admin.replay(services.queues(), request)
    redactor = services.telemetry().redactor
    return _json({"replayed": len(replayed), "messages": [e.to_dict(redactor) for e in replayed]})
