"""Monolith mode for the benchmark: every stage inline in the webhook's HTTP request (the original Flask design).

One HTTP trigger at the same route as the gateway (``POST /api/sendbird/webhook``). It runs the project's own
stage code in one request: :func:`shared.intake.handle_webhook`, then :func:`shared.intent_stage.classify`,
:func:`shared.branch_handlers.handle` and :func:`shared.reply_sender.deliver` with the real clients of the
composition root :mod:`shared.bootstrap` (same app settings), and answers only once the reply was sent. Each stage adds a
:class:`~shared.models.Hop` (queue wait 0) so the reply's ``data.timings`` has the same shape as in the chain.
A failure is an HTTP 500, as the Flask handler gave (SendBird then retries the webhook).

Benchmark tooling only: hosted with ``python -m localrunner --app-root bench/monolith_app``.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import json  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from typing import Any, Callable, TypeVar  # noqa: E402

import azure.functions as func  # noqa: E402

from shared import bootstrap, timing  # noqa: E402
from shared.branch_handlers import handle  # noqa: E402
from shared.intake import handle_webhook  # noqa: E402
from shared.intent_stage import classify  # noqa: E402
from shared.models import INBOUND_QUEUE, QueueMessageBase, RoutedMessage, decode, now_ms  # noqa: E402
from shared.reply_sender import deliver  # noqa: E402
from shared.routes import routes  # noqa: E402
from shared.settings import get_config  # noqa: E402

get_config()

app = func.FunctionApp()
M = TypeVar("M", bound=QueueMessageBase)


def _stage(stage: str, msg: M, work: Callable[[M], QueueMessageBase | None]) -> QueueMessageBase | None:
    """Run one stage inline, recording its duration and outbound-call times as a hop (like the chain does)."""
    started = now_ms()
    with timing.scope() as dependency_ms:
        result = work(msg)
    if result is not None:
        result = result.with_hop(stage, started - msg.enqueued_at_ms, started, dependency_ms)
    return result


class _HoldBack:
    """The queue port, except that a message re-queued on a route queue (held back by an earlier message of the
    same user) is kept here instead: the monolith waits inside the request and tries again."""

    def __init__(self, queues: Any):
        self._queues = queues
        self.held: list[tuple[RoutedMessage, float]] = []

    def send(self, queue: str, text: str, delay_seconds: float = 0, **kw: Any) -> None:
        if queue.startswith("route-"):
            self.held.append((decode(text, RoutedMessage), delay_seconds))
        else:
            self._queues.send(queue, text, delay_seconds, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queues, name)


def _json(body: dict, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, ensure_ascii=False), status_code=status,
                             mimetype="application/json", charset="utf-8")


@app.function_name("sendbird_webhook_monolith")
@app.route(route="sendbird/webhook", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def sendbird_webhook_monolith(req: func.HttpRequest) -> func.HttpResponse:
    svc = bootstrap.root()
    decision = handle_webhook(req.get_body(), req.headers, svc.settings)
    if decision.inbound is None:
        return _json(decision.body, decision.status)
    routed = _stage(INBOUND_QUEUE, decision.inbound, lambda m: classify(m, svc.intent_stage()))
    if routed is None:
        return _json({**decision.body, "reply": "silent"})
    # Per-user order: where the chain re-queues a message held back by an earlier one of the same user
    # (``reschedule``), the monolith waits inside the request and tries again (bounded by the handler itself:
    # after ORDER_MAX_WAIT_SECONDS it handles the message anyway).
    while True:
        hold = _HoldBack(svc.queues)
        deps = replace(svc.branch(), queues=hold)
        reply = _stage(routes().get(routed.route).queue, routed, lambda m, deps=deps: handle(m, deps))
        if not hold.held:
            break
        routed, delay = hold.held[0]
        time.sleep(delay)
    if reply is None:
        return _json({**decision.body, "reply": "silent"})
    outcome = deliver(reply, svc.reply_sender())
    return _json({**decision.body, "reply": outcome})
