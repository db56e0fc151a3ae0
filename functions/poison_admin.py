"""Operations HTTP functions (auth level FUNCTION: a function key is required on Azure).

Routes live under ``ops/``, not ``admin/``: the Functions host refuses any HTTP route whose first segment is
``admin`` or ``runtime`` ("The specified route conflicts with one or more built in routes";
azure-functions-host ``ScriptHost.ValidateHttpFunction``), because its own admin API lives there.

``GET /api/ops/poison[?queue=Q&offset=N&limit=N]``: poison messages of every stage (or of queue Q) with their
reasons, a page at a time (``next_offset`` in the answer; bodies redacted per ``TELEMETRY_PII_MODE``).
``POST /api/ops/poison/replay``: body :class:`shared.poison_admin.ReplayRequest` JSON,
e.g. ``{"correlation_ids": ["..."]}`` or ``{"queues": ["chat-inbound"], "all": true}``;
answers the replayed entries. Bad bodies get 400 with the reason.
"""

from __future__ import annotations

import json

import azure.functions as func
from pydantic import ValidationError

from shared import bootstrap, poison_admin

bp = func.Blueprint()


def _json(body: object, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, ensure_ascii=False), status_code=status,
                             mimetype="application/json", charset="utf-8")


@bp.function_name("ops_poison_list")
@bp.route(route="ops/poison", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def ops_poison_list(req: func.HttpRequest) -> func.HttpResponse:
    try:
        query = poison_admin.ListRequest.model_validate(dict(req.params))
    except ValidationError as exc:
        return _invalid(exc)
    svc = bootstrap.root()
    page = poison_admin.list_poison(svc.queues, (query.queue,) if query.queue else None, offset=query.offset,
                                    limit=query.limit)
    return _json({"count": len(page.entries), "next_offset": page.next_offset,
                  "messages": [e.to_dict(svc.telemetry.redactor) for e in page.entries]})


@bp.function_name("ops_poison_replay")
@bp.route(route="ops/poison/replay", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def ops_poison_replay(req: func.HttpRequest) -> func.HttpResponse:
    try:
        request = poison_admin.ReplayRequest.model_validate_json(req.get_body() or b"{}")
    except ValidationError as exc:
        return _invalid(exc)
    svc = bootstrap.root()
    replayed = poison_admin.replay(svc.queues, request)
    return _json({"replayed": len(replayed), "messages": [e.to_dict(svc.telemetry.redactor) for e in replayed]})


def _invalid(exc: ValidationError) -> func.HttpResponse:
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
    return _json({"error": {"code": "invalid_request", "message": problems}}, 400)
