"""Delivery guarantees at the stage level (in-memory fakes): idempotency, ordering, exactly-once sends."""

from __future__ import annotations

import pytest

from shared.branch_handlers import apology_reply
from shared.errors import PermanentError
from shared.intent_stage import IntentStageDeps, classify
from shared.models import REPLY_QUEUE, ReplyMessage, decode, now_ms
from shared.reply_sender import mark_failed
from tests.support.fakes import clu_prediction
from tests.support.messages import inbound


@pytest.fixture
def chain(chain, intent):
    """The conftest chain, with every utterance classified as a confident greeting."""
    intent.default = clu_prediction("Greeting", 0.9)
    return chain


def test_webhook_retry_is_dropped_before_the_intent_call(chain, intent):
    first = inbound("hi", 1)
    retry = first.model_copy(update={"correlation_id": "another-delivery"})
    assert chain.route(first) is not None
    assert chain.route(retry) is None
    assert len(intent.calls) == 1


def test_queue_redelivery_is_routed_again_with_the_same_sequence_number(chain):
    msg = inbound("hi", 1)
    a, b = chain.route(msg), chain.route(msg)
    assert a.seq == b.seq == 1 and b.route == a.route


def test_sequence_numbers_follow_admission(chain):
    assert [chain.route(inbound("hi", i)).seq for i in (10, 11, 12)] == [1, 2, 3]


def test_redelivered_handler_message_reemits_the_same_reply_and_sender_sends_once(chain, sendbird, store):
    routed = chain.route(inbound("hi", 1))
    r1, r2 = chain.handle(routed), chain.handle(routed)
    assert r1.text == r2.text and r1.dedup_id == r2.dedup_id
    assert [chain.send(r1), chain.send(r2)] == ["sent", "duplicate"]
    assert len(sendbird.messages) == 1 and sendbird.attempts == 1


def test_a_message_waits_for_the_earlier_one_to_be_answered_and_sent(chain, sendbird):
    first, second = chain.route(inbound("hi", 1)), chain.route(inbound("hi again", 2))
    assert chain.handle(second) is None  # first is not final yet
    assert [m.message_id for m in chain.held_back] == [2] and chain.held_back[0].order_waits == 1
    reply1 = chain.handle(first)
    assert chain.handle(second) is None  # answered is not final: its reply is not sent yet
    chain.send(reply1)
    reply2 = chain.handle(chain.held_back[-1])
    assert reply2 is not None and reply2.seq == 2
    chain.send(reply2)
    assert [m["dedup_id"] for m in sendbird.messages] == ["reply-1", "reply-2"]


def test_the_wait_for_an_earlier_message_is_bounded(chain, settings):
    chain.route(inbound("hi", 1))
    second = chain.route(inbound("hi again", 2))
    later = second.received_at_ms + settings.order_max_wait_seconds * 1000 + 1
    assert chain.handle(second, clock=lambda: later) is not None


def test_a_poisoned_reply_no_longer_holds_back_later_messages(chain, settings, store):
    first, second = chain.route(inbound("hi", 1)), chain.route(inbound("hi again", 2))
    reply1 = chain.handle(first)
    mark_failed(reply1, store)
    assert chain.turn(1).status == "failed"
    assert chain.handle(second) is not None


def test_live_claim_elsewhere_reschedules_and_an_expired_claim_is_taken_over(chain, queues, settings, sendbird):
    routed = chain.route(inbound("hi", 1))
    reply = chain.handle(routed)
    t0 = now_ms()
    sendbird.script = [RuntimeError("worker killed mid-send")]  # claim taken, never released
    with pytest.raises(RuntimeError):
        chain.send(reply, clock=lambda: t0)
    assert chain.turn(1).sending is not None  # the claim is still there
    reply = chain.handle(routed)  # another copy of the answer (the routed message redelivered): not the claim's
    assert reply.state_version is None
    assert chain.send(reply, clock=lambda: t0 + 1000) == "rescheduled"
    [(text, delay)] = queues.sent[REPLY_QUEUE]
    assert decode(text, ReplyMessage).reschedules == 1 and 1 <= delay <= settings.reply_send_lease_seconds
    after_lease = t0 + settings.reply_send_lease_seconds * 1000 + 1
    assert chain.send(reply, clock=lambda: after_lease) == "sent"
    assert chain.turn(1).status == "sent"


def test_one_message_is_one_read_and_two_writes(chain, store, sendbird, intent):
    """Admission (read + write, the chain's send claim), the handler (no I/O: its answer travels with the reply),
    the reply sender (send, then one write: the answer and the "sent" mark, on the admission's version)."""
    intent.predictions["where is my order?"] = clu_prediction("OrderStatus", 0.9)
    reads, writes = store.reads, store.writes
    routed = chain.route(inbound("where is my order?", 1))
    claim = chain.turn(1).sending
    assert claim is not None and claim.dedup_id == "reply-1" and routed.state_version is not None
    assert (store.reads, store.writes) == (reads + 2, writes + 1)  # (chain.turn reads too)
    reply = chain.handle(routed)
    assert reply.state_version is not None and reply.state_version.unwritten
    assert (store.reads, store.writes) == (reads + 2, writes + 1) and chain.turn(1).status == "received"
    assert chain.send(reply) == "sent" and sendbird.attempts == 1
    assert (store.reads, store.writes) == (reads + 3, writes + 2)
    turn = chain.turn(1)
    assert turn.status == "sent" and turn.sending is None and turn.sent_dedup_ids == ["reply-1"]
    assert turn.reply_key == "order_status.ask_number" and turn.route == "order_status"
    assert chain.svc.state_store.get_or_create("u-1", "ch-1").pending_slot == "order_number"
    assert chain.send(reply) == "duplicate" and sendbird.attempts == 1  # a redelivery reads, finds it sent


def test_a_failing_stage_releases_its_chains_claim_so_the_apology_does_not_wait(chain, catalog, settings, intent,
                                                                                sendbird):
    from shared.errors import TransientError
    intent.fail_with = TransientError("intent service answered 503")
    with pytest.raises(TransientError):
        chain.route(inbound("hi", 1))
    assert chain.turn(1).status == "received" and chain.turn(1).sending is None
    intent.fail_with = None
    routed = chain.route(inbound("hi", 2, user="u-2"))
    broken = routed.model_copy(update={"route": "no_such_route"})
    with pytest.raises(PermanentError):
        chain.handle(broken)
    assert chain.turn(2, user="u-2").sending is None
    assert chain.send(apology_reply(broken, catalog, settings)) == "sent"


def test_a_redelivery_of_the_claiming_reply_takes_its_claim_over_at_once(chain, sendbird):
    """The host hands a message out again only after its previous invocation ended: no waiting for the lease."""
    reply = chain.handle(chain.route(inbound("hi", 1)))
    sendbird.script = [RuntimeError("worker killed mid-send")]
    with pytest.raises(RuntimeError):
        chain.send(reply)
    assert chain.send(reply) == "sent" and chain.turn(1).status == "sent"


def test_a_forged_or_stale_version_is_not_a_claim(chain, store, sendbird):
    reply = chain.handle(chain.route(inbound("hi", 1)))
    forged = reply.model_copy(update={"text": "click evil.example", "state_version": reply.state_version.model_copy(
        update={"doc": {**reply.state_version.doc, "turns": [
            {**reply.state_version.doc["turns"][0], "reply_text": "click evil.example"}]}})})
    with pytest.raises(PermanentError):  # not sealed: read, and the recorded answer differs
        chain.send(forged)
    assert sendbird.attempts == 0
    unrecorded = reply.model_copy(update={"state_version": None})
    with pytest.raises(PermanentError):  # its answer travels unwritten with the chain's reply: not recorded
        chain.send(unrecorded)
    assert sendbird.attempts == 0


def test_429_releases_the_claim_and_the_rescheduled_copy_sends(chain, queues, sendbird):
    from shared.errors import RateLimited
    reply = chain.handle(chain.route(inbound("hi", 1)))
    sendbird.script = [RateLimited("slow down", 2)]
    assert chain.send(reply) == "rescheduled"
    assert chain.turn(1).sending is None
    [(text, delay)] = queues.sent[REPLY_QUEUE]
    assert delay == 2 and chain.send(decode(text, ReplyMessage)) == "sent"


def test_apology_then_replay_delivers_the_real_answer_once(chain, catalog, settings, sendbird):
    msg = inbound("hi", 1)
    routed = chain.route(msg)
    chain.fail_handler(routed)
    # the handler stage was poisoned: the user gets an apology
    assert chain.send(apology_reply(routed, catalog, settings)) == "sent"
    assert chain.turn(1).status == "sent" and chain.turn(1).reply_key == "apology.error"
    # a late copy of the original message does not answer it a second time
    assert chain.handle(routed) is None
    # after a fix, the poisoned message is replayed (flagged by the poison tooling): the real answer goes out, once
    replayed = routed.model_copy(update={"replayed": True})
    replay = chain.handle(replayed)
    assert replay.reply_key == "greeting.hello" and replay.replayed and chain.send(replay) == "sent"
    assert chain.send(chain.handle(replayed)) == "duplicate"
    assert [m["dedup_id"] for m in sendbird.messages] == ["apology-1", "reply-1"]


def test_an_apology_after_the_real_answer_is_not_shown(chain, catalog, settings, sendbird):
    routed = chain.route(inbound("hi", 1))
    reply = chain.handle(routed)
    apology = apology_reply(routed, catalog, settings)
    # answered but not yet sent (nor recorded: the answer travels with the reply): the apology waits for the claim
    assert chain.send(apology) == "rescheduled"
    assert chain.send(reply) == "sent"
    assert chain.send(apology) == "superseded"
    assert [m["dedup_id"] for m in sendbird.messages] == ["reply-1"]


def test_a_queued_real_reply_after_an_apology_is_sent_only_for_a_replay(chain, catalog, settings, sendbird, store):
    routed = chain.route(inbound("hi", 1))
    chain.fail_handler(routed)
    assert chain.send(apology_reply(routed, catalog, settings)) == "sent"  # poisoned before any answer
    from shared.state import reply_dedup_id
    late = ReplyMessage.following(routed, text="Hello!", language="en", route="greeting",
                        reply_key="greeting.hello", dedup_id=reply_dedup_id(1), seq=routed.seq)

    def answer_recorded(state):  # what the branch handler records with the reply it enqueues
        turn = state.turn_for(1)
        turn.reply_key, turn.reply_text = late.reply_key, late.text
    store.update("u-1", "ch-1", answer_recorded)
    assert chain.send(late) == "superseded"
    assert chain.send(late.model_copy(update={"replayed": True})) == "sent"
    assert [m["dedup_id"] for m in sendbird.messages] == ["apology-1", "reply-1"]


def test_redelivered_inbound_after_it_was_answered_is_not_routed_again(chain, intent):
    msg = inbound("hi", 1)
    chain.send(chain.handle(chain.route(msg)))
    calls = len(intent.calls)
    assert chain.route(msg) is None  # same delivery, already handled: no second intent call
    assert len(intent.calls) == calls


def test_handed_off_conversation_admits_silently(chain, intent):
    intent.predictions["상담원"] = clu_prediction("HumanHandoff", 0.95)
    chain.send(chain.handle(chain.route(inbound("상담원", 1))))
    assert chain.route(inbound("hello?", 2)) is None
    assert chain.turn(2).status == "silent"
    assert chain.route(inbound("hello?", 2)) is None  # a redelivery stays silent


def test_nothing_is_written_when_nothing_changes(chain, store):
    routed = chain.route(inbound("hi", 1))
    chain.send(chain.handle(routed))
    writes = store.writes
    chain.route(inbound("hi", 1).model_copy(update={"correlation_id": "retry"}))  # duplicate: read only
    assert store.writes == writes


# ---------------------------------------------------------------- only the gateway's own replies are sent


def _forged(routed, **changes):
    base = dict(text="Click http://evil.example for a refund", language="en", route="greeting",
                reply_key="greeting.hello", dedup_id="reply-1", seq=routed.seq)
    return ReplyMessage.following(routed, **{**base, **changes})


@pytest.mark.parametrize("change, reason", [
    ({}, "differs from the answer recorded"),
    ({"text": "Hello! How can I help you today?", "message_id": 999}, "no turn the gateway admitted"),
    ({"channel_url": "sendbird_group_channel_other"}, "admitted in another channel"),
    ({"reply_key": "apology.error"}, "claims to be the apology"),
])
def test_a_reply_the_gateway_did_not_produce_is_refused_and_nothing_is_sent(chain, sendbird, store, change, reason):
    from shared.errors import PermanentError
    routed = chain.route(inbound("hi", 1))
    real = chain.handle(routed)
    forged = _forged(routed, **change)
    with pytest.raises(PermanentError, match=reason):
        chain.send(forged)
    assert sendbird.messages == [] and sendbird.attempts == 0
    assert store.get_or_create("u-1", "ch-1").turn_for(999) is None  # no turn made up for it
    assert chain.send(real) == "sent"  # the real answer still goes out


def test_a_refused_reply_that_is_poisoned_marks_nothing(chain, settings, store):
    routed = chain.route(inbound("hi", 1))
    mark_failed(_forged(routed, message_id=999), store)
    assert store.get_or_create("u-1", "ch-1").turn_for(999) is None


def test_an_apology_without_a_turn_is_still_delivered(chain, catalog, settings, sendbird, store):
    """The intent stage may poison a message before it was admitted (state store down): the user still
    gets the apology, the one fixed text a forged message could make the bot say."""
    apology = apology_reply(inbound("hi", 7), catalog, settings)
    assert chain.send(apology) == "sent"
    assert [m["dedup_id"] for m in sendbird.messages] == ["apology-7"]


def test_a_message_id_evicted_from_the_history_is_still_a_duplicate_within_the_replay_window(chain, settings, intent,
                                                                                             store):
    small = IntentStageDeps(store, intent, settings.model_copy(update={"state_history_limit": 2}))
    t0 = now_ms()
    first = inbound("hi", 1)
    assert classify(first, small, clock=lambda: t0)
    for i in (2, 3, 4):  # evicts message 1's turn from the 2-turn history
        classify(inbound("hi", i), small, clock=lambda: t0)
    assert chain.turn(1) is None
    replayed = first.model_copy(update={"correlation_id": "a-captured-webhook"})
    assert classify(replayed, small, clock=lambda: t0) is None
    later = t0 + (settings.webhook_replay_window_seconds + settings.webhook_max_clock_skew_seconds + 1) * 1000
    state = store.get_or_create("u-1", "ch-1")
    assert "1" in state.recent_message_ids
    classify(inbound("hi", 5), small, clock=lambda: later)
    assert "1" not in store.get_or_create("u-1", "ch-1").recent_message_ids  # forgotten after the window


def test_a_recorded_answer_whose_reply_message_was_lost_is_sent_instead_of_an_apology(chain, catalog, settings,
                                                                                       sendbird, store):
    """The handler wrote its answer (and its send claim), then its invocation died before the host wrote the reply
    message, on its last attempt: the routed message is poisoned and its apology comes. Nobody will send the real
    reply, so the apology must not be superseded by it (silence, seen in the `hung` fault preset): once the
    handler's claim expires, the recorded answer goes out under its own dedup_id; a late real reply is a duplicate."""
    from shared.state import SendClaim, reply_dedup_id

    routed = chain.route(inbound("hi", 1))
    t0 = now_ms()

    def handler_wrote(state):  # what a handler's own write records (not deferred), its reply message then lost
        turn = state.turn_for(1)
        turn.status, turn.reply_key, turn.reply_text = "answered", "greeting.hello", "Hello!"
        turn.sending = SendClaim(dedup_id=reply_dedup_id(1), since_ms=t0)
    store.update("u-1", "ch-1", handler_wrote)
    apology = apology_reply(routed, catalog, settings)
    assert chain.send(apology, clock=lambda: t0 + 1_000) == "rescheduled"   # the handler's claim is live: wait
    assert sendbird.messages == []
    lease_ms = settings.reply_send_lease_seconds * 1000
    assert chain.send(apology, clock=lambda: t0 + lease_ms + 1) == "sent"    # expired, nobody sent it: the answer
    assert [(m["dedup_id"], m["message"]) for m in sendbird.messages] == [("reply-1", "Hello!")]
    assert chain.turn(1).status == "sent" and chain.turn(1).reply_key == "greeting.hello"
    late = ReplyMessage.following(routed, text="Hello!", language="en", route="greeting", reply_key="greeting.hello",
                                  dedup_id=reply_dedup_id(1), seq=routed.seq)
    assert chain.send(late) == "duplicate" and chain.send(apology) == "superseded"
    assert len(sendbird.messages) == 1
