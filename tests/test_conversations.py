"""What the console does to a conversation: find it, end a handoff, clear a slot, erase the user's data."""

from __future__ import annotations

import pytest

from shared.conversations import (ConversationDeps, ConversationNotFound, clear_slot, end_handoff, erase,
                                  erasure_subject, find)
from shared.models import now_ms
from shared.review import ReviewDeps, capture_for, record
from shared.telemetry import Redactor
from tests.support.fakes import InMemoryReviewStore, clu_prediction


@pytest.fixture
def deps(services) -> ConversationDeps:
    return ConversationDeps(services.state_store, services.state_store, InMemoryReviewStore(), Redactor("off"), "k" * 16)


def test_find_by_user_then_channel_then_recent(chain, deps):
    chain.say("hi")
    assert [s.user_id for s in find(deps, "u-1")] == ["u-1"]
    assert [s.user_id for s in find(deps, "ch-1")] == ["u-1"]
    assert find(deps, "nobody") == [] and [s.user_id for s in find(deps, "")] == ["u-1"]


def test_end_a_handoff_early_and_the_bot_answers_again(chain, deps, intent):
    intent.predictions["I want a person"] = clu_prediction("HumanHandoff", 0.95)
    intent.predictions["hello?"] = clu_prediction("Greeting", 0.95)
    chain.say("I want a person")
    assert chain.say("hello?") == (None, None), "handed off: silent"
    state = end_handoff(deps, "u-1")
    assert not state.is_handed_off(now_ms())
    routed, reply = chain.say("hello?")
    assert reply is not None and reply.reply_key == "greeting.hello"


def test_clear_a_pending_slot(chain, deps, intent):
    intent.predictions["where is my order"] = clu_prediction("OrderStatus", 0.95)
    chain.say("where is my order")
    assert deps.state_admin.find("u-1").pending_slot == "order_number"
    assert clear_slot(deps, "u-1").pending_slot is None
    with pytest.raises(ConversationNotFound):
        clear_slot(deps, "nobody")


def test_erase_removes_the_state_and_the_review_share_and_reports_counts(chain, deps, intent, settings):
    intent.predictions["waiting for ages for my kettle"] = clu_prediction("None", 0.9)
    routed, _ = chain.say("waiting for ages for my kettle")
    record(capture_for(routed, "m", settings), ReviewDeps(deps.review_store, deps.redactor))
    erasure = erase(deps, "u-1")
    assert erasure.state_deleted and erasure.review_items_deleted == 1
    assert deps.state_admin.find("u-1") is None and deps.review_store.recent() == []
    assert erasure.subject == erasure_subject("u-1", "k" * 16) and "u-1" not in erasure.subject
    again = erase(deps, "u-1")
    assert not again.state_deleted and again.review_items_deleted == 0
