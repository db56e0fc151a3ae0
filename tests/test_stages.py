"""Intent stage, branch handlers and reply sender against in-memory fakes."""

from __future__ import annotations

import json

import pytest

from shared.errors import PermanentError, RateLimited, TransientError
from shared.branch_handlers import BranchDeps, apology_reply, handle
from shared.intent_stage import IntentStageDeps, classify
from shared.language import detect_language
from shared.models import REPLY_QUEUE, ReplyMessage, decode, now_ms
from shared.reply_sender import ReplyDeps, deliver
from shared.routing import choose_route
from shared.clients.clu import parse_clu_response
from tests.support.fakes import FakeSendBird, InMemoryStateStore, RecordingQueueSender, clu_prediction
from tests.support.messages import admitted, inbound, reply_msg

ORDER = {"category": "OrderNumber", "text": "20261119-0042", "offset": 22, "length": 13, "confidenceScore": 1.0}
SHOES = {"category": "ProductCategory", "text": "운동화", "offset": 0, "length": 3, "confidenceScore": 1.0,
         "extraInformation": [{"extraInformationKind": "ListKey", "key": "shoes"}]}


@pytest.fixture
def bot(chain):
    """One message at a time through all three stages."""
    return chain


# ---------------------------------------------------------------- routing
@pytest.mark.parametrize("top, score, route", [
    ("Greeting", 0.9, "greeting"), ("Help", 0.6, "help"), ("OrderStatus", 0.5, "order_status"),
    ("ProductSearch", 0.99, "product_search"), ("HumanHandoff", 0.7, "handoff"),
    ("ThanksGoodbye", 0.8, "goodbye"), ("OrderStatus", 0.49, "fallback"), ("None", 0.95, "fallback"),
    ("SomethingNew", 0.99, "fallback"),
])
def test_route_by_top_intent_and_threshold(top, score, route):
    assert choose_route(parse_clu_response(clu_prediction(top, score)), None, 0.5) == (route, None)


def test_pending_slot_entity_wins_over_the_intent():
    p = parse_clu_response(clu_prediction("None", 0.9, entities=[ORDER]))
    assert choose_route(p, "order_number", 0.5) == ("order_status", "order_number")
    assert choose_route(p, None, 0.5) == ("fallback", None)


@pytest.mark.parametrize("text, lang", [("Hi there", "en"), ("안녕하세요", "ko"), ("나이키 sneakers 있어요?", "ko"),
                                        ("Nike 신발", "ko"), ("20261119-0042", None), ("", None)])
def test_language_detection(text, lang):
    assert detect_language(text) == lang


# ---------------------------------------------------------------- conversations
def test_greeting_in_english(bot, intent, catalog):
    intent.predictions["Hello!"] = clu_prediction("Greeting", 0.93)
    routed, reply = bot.say("Hello!")
    assert routed.route == "greeting" and routed.language == "en" and routed.confidence_score == 0.93
    assert reply.text == catalog.render("greeting.hello", "en") and reply.route == "greeting"
    assert reply.top_intent == "Greeting" and reply.confidence_score == 0.93
    assert reply.dedup_id == f"reply-{routed.message_id}" and reply.correlation_id == routed.correlation_id
    assert intent.calls[-1]["language"] == "en" and intent.calls[-1]["participant_id"] == "u-1"


def test_order_status_asks_for_the_number_then_uses_the_next_message(bot, intent, store, catalog):
    intent.predictions["주문 조회해 주세요"] = clu_prediction("OrderStatus", 0.88)
    intent.predictions["20261119-0042"] = clu_prediction("None", 0.7, entities=[ORDER])
    _, ask = bot.say("주문 조회해 주세요")
    assert ask.reply_key == "order_status.ask_number" and ask.language == "ko"
    assert store.get_or_create("u-1", "ch-1").pending_slot == "order_number"
    routed, found = bot.say("20261119-0042")
    assert routed.route == "order_status" and routed.slot_filled == "order_number"
    assert routed.language == "ko"  # no letters: the language of the conversation so far
    assert found.reply_key == "order_status.found" and "20261119-0042" in found.text
    assert "https://shop.example.com/orders/20261119-0042" in found.text
    assert store.get_or_create("u-1", "ch-1").pending_slot is None


def test_order_number_in_the_first_message_answers_at_once(bot, intent):
    intent.predictions["Hi, where is my order 20261119-0042?"] = clu_prediction("OrderStatus", 0.9, entities=[ORDER])
    _, reply = bot.say("Hi, where is my order 20261119-0042?")
    assert reply.reply_key == "order_status.found" and reply.language == "en"


def test_product_search_uses_the_list_entity_key(bot, intent):
    intent.predictions["운동화 보여줘"] = clu_prediction("ProductSearch", 0.9, entities=[SHOES])
    _, reply = bot.say("운동화 보여줘")
    assert reply.reply_key == "product_search.results"
    assert "운동화" in reply.text and "category=shoes" in reply.text


def test_product_search_without_category_asks_and_fills_the_slot(bot, intent, store):
    intent.predictions["I want to buy something"] = clu_prediction("ProductSearch", 0.8)
    intent.predictions["운동화"] = clu_prediction("None", 0.6, entities=[SHOES])
    assert bot.say("I want to buy something")[1].reply_key == "product_search.ask_category"
    routed, reply = bot.say("운동화")
    assert routed.slot_filled == "product_category" and reply.reply_key == "product_search.results"


def test_handoff_silences_the_bot_until_the_reset(bot, intent, store, settings):
    intent.predictions["상담원 연결해 주세요"] = clu_prediction("HumanHandoff", 0.95)
    intent.predictions["hello?"] = clu_prediction("Greeting", 0.95)
    t0 = now_ms()
    _, reply = bot.say("상담원 연결해 주세요", clock=lambda: t0)
    assert reply.reply_key == "handoff.connecting"
    calls = len(intent.calls)
    assert bot.say("hello?", clock=lambda: t0 + 1000) == (None, None)
    assert len(intent.calls) == calls  # silent: not even classified
    after = t0 + settings.handoff_reset_seconds * 1000 + 1
    _, reply = bot.say("hello?", clock=lambda: after)
    assert reply.reply_key == "greeting.hello"


def test_fallback_offers_the_top_suggestions(bot, intent, catalog):
    intent.predictions["hmm about my stuff"] = clu_prediction(
        "OrderStatus", 0.41, {"ProductSearch": 0.3, "None": 0.2, "Help": 0.02})
    routed, reply = bot.say("hmm about my stuff")
    assert routed.route == "fallback" and reply.reply_key == "fallback.suggest"
    assert catalog.render("intent.OrderStatus", "en") in reply.text
    assert catalog.render("intent.ProductSearch", "en") in reply.text
    assert catalog.render("intent.Help", "en") not in reply.text  # below the minimum score


def test_fallback_without_suggestions_is_generic(bot, intent):
    intent.predictions["asdf qwer"] = clu_prediction("None", 0.97)
    assert bot.say("asdf qwer")[1].reply_key == "fallback.generic"


def test_file_gets_a_text_only_reply_without_calling_the_intent_service(bot, intent):
    routed, reply = bot.say("", message_type="FILE")
    assert routed.route == "unsupported" and reply.reply_key == "unsupported.file"
    assert reply.language == "ko"  # DEFAULT_LANGUAGE for a new user
    assert intent.calls == []


def test_goodbye_clears_a_pending_slot(bot, intent, store):
    intent.predictions["order status"] = clu_prediction("OrderStatus", 0.8)
    intent.predictions["thanks, bye"] = clu_prediction("ThanksGoodbye", 0.9)
    bot.say("order status")
    assert bot.say("thanks, bye")[1].reply_key == "goodbye.thanks"
    assert store.get_or_create("u-1", "ch-1").pending_slot is None


def test_history_is_bounded(bot, intent, store, settings):
    intent.default = clu_prediction("Greeting", 0.9)
    for _ in range(settings.state_history_limit + 5):
        bot.say("hi")
    turns = store.get_or_create("u-1", "ch-1").turns
    assert len(turns) == settings.state_history_limit and turns[-1].message_id == bot.next_id
    assert [t.seq for t in turns] == list(range(6, settings.state_history_limit + 6))


def test_concurrent_writer_causes_a_retry_not_a_lost_update(store, settings, catalog, intent):
    state_user = "u-9"
    store.get_or_create(state_user, "ch-1")
    injected = []

    def other_writer(user_id):
        if not injected:
            injected.append(1)
            store.before_write = None
            store.update(user_id, "ch-1", lambda s: setattr(s, "ops_note", "vip"))

    intent.predictions["주문"] = clu_prediction("OrderStatus", 0.9)
    routed = classify(inbound("주문", 8, user=state_user), IntentStageDeps(store, intent, settings))
    store.before_write = other_writer
    requeued = RecordingQueueSender()
    writes = store.writes
    reply = handle(routed, BranchDeps(store, requeued, catalog, settings))
    assert requeued.sent == {} and reply is not None  # handled, not held back
    assert store.writes == writes  # the answer travels unwritten with the reply: one write with the "sent" mark
    assert deliver(reply, ReplyDeps(FakeSendBird(), requeued, store, settings, catalog)) == "sent"
    state = store.get_or_create(state_user, "ch-1")
    assert store.conflicts == 1 and getattr(state, "ops_note", None) == "vip"  # the other writer's change is kept
    assert state.pending_slot == "order_number" and [t.message_id for t in state.turns] == [8]
    assert state.turns[0].status == "sent" and state.turns[0].reply_key == "order_status.ask_number"


def test_intent_service_errors_propagate(store, intent, settings):
    intent.fail_with = TransientError("intent service answered 503")
    with pytest.raises(TransientError):
        classify(inbound("hi"), IntentStageDeps(store, intent, settings))


def test_apology_follows_the_language_and_shares_the_dedup_id(catalog, settings):
    a = apology_reply(inbound("where is my order?", 5), catalog, settings)
    assert a.language == "en" and a.reply_key == "apology.error" and a.dedup_id == "apology-5"
    assert apology_reply(inbound("주문 어디예요", 6), catalog, settings).language == "ko"


# ---------------------------------------------------------------- reply sender
def send(reply, sendbird, queues, settings, store=None, clock=now_ms):
    from shared.catalog import ResponseCatalog
    store = admitted(store or InMemoryStateStore(), reply)
    return deliver(reply, ReplyDeps(sendbird, queues, store, settings, ResponseCatalog.load()), clock=clock)


def test_reply_is_sent_with_dedup_id_and_correlation(sendbird, queues, settings):
    reply = reply_msg()
    assert send(reply, sendbird, queues, settings) == "sent"
    [m] = sendbird.messages
    assert m["channel_url"] == "ch-1" and m["message"] == "Hello!" and m["dedup_id"] == "reply-11"
    data = json.loads(m["data"])
    timings = data.pop("timings")
    assert data == {"correlation_id": "corr-11", "route": "greeting", "intent": None, "confidence": 0.0,
                    "reply_key": "greeting.hello"}
    assert timings["received_at_ms"] == reply.received_at_ms and timings["hops"] == []
    assert timings["reply_queue_wait_ms"] >= 0


def test_redelivered_reply_is_not_sent_again(sendbird, queues, settings, store):
    assert send(reply_msg(), sendbird, queues, settings, store) == "sent"
    assert send(reply_msg(), sendbird, queues, settings, store) == "duplicate"
    assert len(sendbird.messages) == 1 and sendbird.attempts == 1
    turn = store.get_or_create("u-1", "ch-1").turn_for(11)
    assert turn.status == "sent" and turn.sent_dedup_ids == ["reply-11"] and turn.sending is None


def test_429_reschedules_with_the_retry_after_delay(sendbird, queues, settings):
    sendbird.script = [RateLimited("slow down", 3)]
    assert send(reply_msg(), sendbird, queues, settings) == "rescheduled"
    [(text, delay)] = queues.sent[REPLY_QUEUE]
    assert delay == 3 and decode(text, ReplyMessage).reschedules == 1
    assert sendbird.messages == []


def test_429_after_max_reschedules_is_permanent(sendbird, queues, settings):
    sendbird.script = [RateLimited("slow down", 1)]
    with pytest.raises(PermanentError, match="not delivered after"):
        send(reply_msg(settings.reply_max_reschedules), sendbird, queues, settings)


@pytest.mark.parametrize("error", [TransientError("SendBird answered 503"), PermanentError("400")])
def test_other_send_errors_propagate(sendbird, queues, settings, error, store):
    sendbird.script = [error]
    with pytest.raises(type(error)):
        send(reply_msg(), sendbird, queues, settings, store)
    assert queues.sent == {}
    assert store.get_or_create("u-1", "ch-1").turn_for(11).sending is None  # claim released


def test_a_long_message_is_classified_on_its_excerpt_and_routed_with_its_full_text(store, intent, settings):
    from shared.utterance import intent_excerpt
    text = "I need help with something. " + "Some long story about my week. " * 100 + "Where is my order?"
    assert len(text) > settings.intent_max_text_chars
    intent.default = clu_prediction("OrderStatus", 0.9)
    routed = classify(inbound(text), IntentStageDeps(store, intent, settings))
    [call] = intent.calls
    assert call["text"] == intent_excerpt(text, settings.intent_max_text_chars)
    assert len(call["text"]) <= settings.intent_max_text_chars and call["text"].endswith("Where is my order?")
    assert routed.text == text and routed.route == "order_status"
