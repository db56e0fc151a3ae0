"""The trigger functions translate (HTTP/queue <-> plain code) and do nothing else.

The functions are called the way the worker calls them (``func.HttpRequest``,
``azure.functions.queue.QueueMessage`` with a dequeue count, ``func.Out``),
on the composition root built with in-memory fakes (``bootstrap.install``).
"""

from __future__ import annotations

import asyncio
import json

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage

from functions import branch_handlers as handler_functions
from functions import intake as intake_fn
from functions import intent_stage as intent_fn
from functions import reply_sender as reply_fn
from shared import bootstrap
from shared.errors import TransientError
from shared.models import INBOUND_QUEUE, REPLY_QUEUE, InboundMessage, ReplyMessage, ReviewCapture, RoutedMessage, decode
from shared.routes import routes
from shared.signature import sign
from tests.support.samples import SAMPLE_TOKEN, payload
from tests.support.fakes import clu_prediction
from tests.support.messages import inbound, reply_msg


class Out(func.Out):
    def __init__(self):
        self.value = None

    def set(self, val):
        self.value = val

    def get(self):
        return self.value


@pytest.fixture
def wired(services):
    """The trigger functions run on the composition root of fakes (one line: install it)."""
    bootstrap.install(services)
    yield services.config
    bootstrap.install(None)


def webhook(body: bytes, signature: str | None = None) -> func.HttpRequest:
    headers = {"content-type": "application/json",
               "x-sendbird-signature": signature if signature is not None else sign(body, SAMPLE_TOKEN)}
    return func.HttpRequest("POST", "http://localhost/api/sendbird/webhook", body=body, headers=headers)


def call_intake(req: func.HttpRequest, out: Out) -> func.HttpResponse:
    """The webhook intake is ``async def``: awaited on an event loop, as the worker runs it."""
    return asyncio.run(intake_fn.sendbird_webhook(req, out))


def test_webhook_enqueues_and_answers_json(wired):
    out = Out()
    from tools.send_webhook import refresh_created_at
    resp = call_intake(webhook(refresh_created_at(payload("message_send_ko.json"))), out)
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    body = json.loads(resp.get_body())
    assert body["status"] == "accepted" and body["message_id"] == 1758211234568
    assert decode(out.get(), InboundMessage).text == "안녕하세요, 주문한 상품 배송 조회 좀 해주세요"


def test_webhook_rejection_sets_no_output(wired):
    out = Out()
    resp = call_intake(webhook(payload("message_send_en.json"), signature="bad"), out)
    assert resp.status_code == 401 and json.loads(resp.get_body())["error"]["code"] == "invalid_signature"
    assert out.get() is None


def queue_msg(text: str | bytes, dequeue_count: int = 1) -> QueueMessage:
    return QueueMessage(id="m1", body=text.encode() if isinstance(text, str) else text, dequeue_count=dequeue_count)


def intent_outputs() -> dict[str, Out]:
    return {**{r.binding: Out() for r in routes()}, "to_review": Out()}


def test_intent_function_writes_only_the_chosen_route(wired, intent):
    intent.predictions["show me sneakers"] = clu_prediction("ProductSearch", 0.9)
    outs = intent_outputs()
    intent_fn.intent_stage(queue_msg(inbound("show me sneakers").to_queue_text()), **outs)
    written = {name: o.get() for name, o in outs.items() if o.get() is not None}
    assert list(written) == ["to_product_search"]
    assert decode(written["to_product_search"], RoutedMessage).top_intent == "ProductSearch"


def test_intent_function_writes_a_review_capture_for_a_fallback_only(wired, intent):
    intent.predictions["waiting for ages for my kettle"] = clu_prediction("None", 0.89, {"OrderStatus": 0.07})
    intent.predictions["where is my order"] = clu_prediction("OrderStatus", 0.95)
    outs = intent_outputs()
    intent_fn.intent_stage(queue_msg(inbound("waiting for ages for my kettle").to_queue_text()), **outs)
    capture = decode(outs["to_review"].get(), ReviewCapture)
    assert capture.reason == "fallback" and capture.route == "fallback" and capture.text.endswith("kettle")
    assert [i.category for i in capture.intents] == ["None", "OrderStatus"] and outs["to_fallback"].get()
    outs = intent_outputs()
    intent_fn.intent_stage(queue_msg(inbound("where is my order", 2).to_queue_text()), **outs)
    assert outs["to_review"].get() is None and outs["to_order_status"].get() is not None


def test_review_function_records_the_capture(wired, services):
    from functions import review_capture as review_fn
    routed = RoutedMessage.following(inbound("waiting for ages for my kettle"), route="fallback", language="en",
                                     text="waiting for ages for my kettle", top_intent="None", confidence_score=0.9)
    capture = ReviewCapture.following(routed, reason="fallback", text=routed.text, language="en", route="fallback",
                                      top_intent="None", confidence_score=0.9)
    review_fn.review_capture(queue_msg(capture.to_queue_text()))
    review_fn.review_capture(queue_msg(capture.to_queue_text(), 2))  # a redelivery counts once
    [item] = services.review_store.recent()
    assert item.count == 1 and item.text == "waiting for ages for my kettle" and item.status == "open"


def test_intent_function_poisons_an_unknown_version_and_writes_nothing(wired, queues):
    outs = intent_outputs()
    intent_fn.intent_stage(queue_msg(json.dumps({"type": "inbound", "version": 99})), **outs)
    assert all(o.get() is None for o in outs.values())
    [record] = queues.poison_records(INBOUND_QUEUE)
    assert "version 99" in record.reason


def test_intent_function_reraises_transient_errors_for_the_host(wired, intent):
    intent.fail_with = TransientError("intent service answered 503")
    with pytest.raises(TransientError):
        intent_fn.intent_stage(queue_msg(inbound().to_queue_text(), 2), **intent_outputs())


def test_intent_function_last_attempt_poisons_and_apologizes(wired, intent, queues):
    intent.fail_with = TransientError("intent service answered 503")
    outs = intent_outputs()
    intent_fn.intent_stage(queue_msg(inbound("where is my order").to_queue_text(), 5), **outs)
    assert "503" in queues.poison_records(INBOUND_QUEUE)[0].reason
    [apology] = [decode(t, ReplyMessage) for t in queues.texts(REPLY_QUEUE)]
    assert apology.reply_key == "apology.error" and apology.language == "en"


def test_branch_function_writes_the_reply(wired, store, settings):
    from shared.intent_stage import admit
    store.update("u-1", "ch-1", lambda s: admit(inbound("hi"), s, settings, 0))
    routed = RoutedMessage.following(inbound("hi"), route="greeting", text="hi", language="en",
                           top_intent="Greeting", confidence_score=0.9, seq=1)
    out = Out()
    handler_functions.process_routed(routes().get("greeting"), queue_msg(routed.to_queue_text()), out)
    assert decode(out.get(), ReplyMessage).reply_key == "greeting.hello"


def test_reply_function_sends_through_sendbird(wired, sendbird, store):
    from tests.support.messages import admitted
    admitted(store, reply_msg())
    reply_fn.reply_sender(queue_msg(reply_msg().to_queue_text()))
    assert [m["message"] for m in sendbird.messages] == ["Hello!"]


def test_queue_outputs_are_bytes_so_the_host_passes_them_through_unchanged(wired, intent):
    """A ``str`` output that parses as JSON is re-serialized by the host (indented, ISO-date strings rewritten);
    ``bytes`` are written as they are (azure-functions QueueMessageOutConverter: a ``bytes`` datum)."""
    from localrunner import hostjson
    text = "2026-12-03T09:00:00.000+09:00"  # a customer who pastes a timestamp
    outs = intent_outputs()
    intent_fn.intent_stage(queue_msg(inbound(text).to_queue_text()), **outs)
    [written] = [o.get() for name, o in outs.items() if o.get() is not None and name != "to_review"]
    assert isinstance(written, bytes) and decode(written, RoutedMessage).text == text
    # what the host would have made of the same message given as a str:
    [as_str] = hostjson.host_messages(written.decode("utf-8"))
    assert decode(as_str, RoutedMessage).text != text


def test_the_webhook_intake_does_not_depend_on_cosmos_db_being_reachable():
    """Building the composition root opens no Cosmos DB connection (the SDK client's constructor talks to the
    account): with Cosmos DB down, webhooks are still accepted and enqueued; the stages that need it retry."""
    from shared.errors import TransientError
    from shared.settings import load_settings
    from tests.support.samples import sample_values
    from tools.send_webhook import refresh_created_at
    cfg = load_settings({**sample_values(), "COSMOS_ENDPOINT": "https://127.0.0.1:9/", "COSMOS_TIMEOUT_SECONDS": "2"})
    services = bootstrap.build(cfg)
    bootstrap.install(services)
    try:
        out = Out()
        resp = call_intake(webhook(refresh_created_at(payload("message_send_en.json"))), out)
        assert resp.status_code == 200 and json.loads(resp.get_body())["status"] == "accepted"
        assert decode(out.get(), InboundMessage).message_id == 1758211234567
        with pytest.raises(TransientError):
            services.state_store.get_or_create("u-1", "ch-1")
    finally:
        bootstrap.install(None)
        services.telemetry.close()
