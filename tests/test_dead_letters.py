"""Messages the host moved to a poison queue (worker crash / functionTimeout on the last attempt): recorded with a
reason and the user answered, exactly once (shared.dead_letters, in-memory fakes)."""

from __future__ import annotations

import pytest

from shared.routes import routes

from shared.dead_letters import HOST_MOVED_REASON, DeadLetterDeps, handle_host_moved
from shared.models import INBOUND_QUEUE, REPLY_QUEUE, PoisonRecord, RoutedMessage
from shared.reply_sender import ReplyDeps, deliver
from tests.support.messages import admitted, inbound, reply_msg


def run(body, queue, queues, store, catalog, settings):
    return handle_host_moved(body, queue, DeadLetterDeps(queues, store, catalog, settings, max_dequeue_count=5))


def test_a_host_moved_user_message_gets_a_record_and_an_apology(queues, store, catalog, settings):
    msg = inbound("where is my order?", 3)
    apology = run(msg.to_queue_text(), INBOUND_QUEUE, queues, store, catalog, settings)
    [rec] = queues.poison_records(INBOUND_QUEUE)
    assert rec.reason == HOST_MOVED_REASON and rec.error_type == "HostMovedToPoison"
    assert (rec.message_id, rec.correlation_id, rec.original) == (3, msg.correlation_id, msg.to_queue_text())
    assert apology.reply_key == "apology.error" and apology.dedup_id == "apology-3" and apology.language == "en"


def test_a_routed_message_apologises_in_its_language(queues, store, catalog, settings):
    routed = RoutedMessage.following(inbound("주문 어디", 4), route="order_status", text="주문 어디",
                           language="ko", top_intent="OrderStatus", confidence_score=0.9, seq=1)
    apology = run(routed.to_queue_text(), "route-order-status", queues, store, catalog, settings)
    assert apology.language == "ko" and queues.poison_records("route-order-status")[0].message_id == 4


def test_a_host_moved_reply_marks_its_turn_failed_and_the_user_gets_the_apology(queues, store, catalog, settings,
                                                                                sendbird):
    reply = reply_msg()
    admitted(store, reply)
    apology = run(reply.to_queue_text(), REPLY_QUEUE, queues, store, catalog, settings)
    assert store.get_or_create("u-1", "ch-1").turn_for(11).status == "failed"
    assert queues.poison_records(REPLY_QUEUE)[0].message_id == 11
    assert apology.dedup_id == "apology-11" and apology.language == "en"
    assert deliver(apology, ReplyDeps(sendbird, queues, store, settings, catalog)) == "sent"  # not superseded


def test_a_host_moved_apology_gets_no_other_apology(queues, store, catalog, settings):
    from shared.branch_handlers import apology_reply
    apology = apology_reply(inbound("hi", 12), catalog, settings)
    assert run(apology.to_queue_text(), REPLY_QUEUE, queues, store, catalog, settings) is None


def test_an_unreadable_body_is_recorded_with_why(queues, store, catalog, settings):
    assert run("{not json", INBOUND_QUEUE, queues, store, catalog, settings) is None
    [rec] = queues.poison_records(INBOUND_QUEUE)
    assert rec.reason.startswith(HOST_MOVED_REASON) and "not readable" in rec.reason and rec.original == "{not json"


def test_an_app_record_left_in_the_hosts_queue_is_moved_as_it_is(queues, store, catalog, settings):
    old = PoisonRecord(source_queue=INBOUND_QUEUE, reason="intent service answered 503", error_type="TransientError",
                       dequeue_count=5, poisoned_at_ms=1, message_id=9, original="{}")
    assert run(old.model_dump_json(), INBOUND_QUEUE, queues, store, catalog, settings) is None
    assert queues.poison_records(INBOUND_QUEUE) == [old]


def test_a_redelivered_poison_message_apologises_once(queues, store, catalog, settings, sendbird):
    """The poison trigger itself may run twice (crash after its outputs): the user still sees one apology."""
    msg = inbound("hi", 5)
    apologies = [run(msg.to_queue_text(), INBOUND_QUEUE, queues, store, catalog, settings) for _ in range(2)]
    deps = ReplyDeps(sendbird, queues, store, settings, catalog)
    outcomes = [deliver(a, deps) for a in apologies]
    assert outcomes == ["sent", "duplicate"] and [m["dedup_id"] for m in sendbird.messages] == ["apology-5"]


@pytest.mark.parametrize("queue", [INBOUND_QUEUE, *routes().queues(), REPLY_QUEUE])
def test_every_stage_queue_has_a_poison_trigger(queue):
    import importlib
    import os

    from shared.models import poison_queue_name
    from tests.support.samples import sample_values
    saved = dict(os.environ)
    os.environ.update(sample_values())
    try:
        import function_app
        importlib.reload(function_app)
        triggers = {b["queueName"] for f in function_app.app.get_functions()
                    for b in __import__("json").loads(f.get_function_json())["bindings"] if b["type"] == "queueTrigger"}
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert poison_queue_name(queue) in triggers
