"""The review inbox: what the intent stage captures, how captures fold into deduplicated items (PII modes),
decisions and a user's erasure; the intent stage's output end to end through the chain driver."""

from __future__ import annotations

import pytest

from shared.intent_stage import run
from shared.models import ReviewCapture, RoutedMessage
from shared.review import (ReviewDeps, ReviewNotFound, capture_for, decide, forget_user, item_id, normalise, record,
                           reopen)
from shared.settings import load_settings
from shared.telemetry import Redactor
from tests.support.fakes import InMemoryReviewStore, clu_prediction
from tests.support.messages import inbound
from tests.support.samples import sample_values

KEY = "0123456789abcdef-pii-key"


def routed(text: str = "waiting for ages for my kettle", route: str = "fallback", score: float = 0.3,
           message_id: int = 1, user: str = "u-1", **changes) -> RoutedMessage:
    return RoutedMessage.following(inbound(text, message_id, user=user), route=route, text=text, language="en",
                                   top_intent="None" if route == "fallback" else "OrderStatus",
                                   confidence_score=score, **changes)


def capture(text: str = "waiting for ages for my kettle", message_id: int = 1, user: str = "u-1",
            settings=None) -> ReviewCapture:
    c = capture_for(routed(text, message_id=message_id, user=user), "m-1", settings or load_settings(
        sample_values()).settings)
    assert c is not None
    return c


def test_normalise_groups_phrasings_that_differ_only_in_case_spacing_digits_and_punctuation():
    assert normalise("  Where is ORDER 20261119-0042?? ") == normalise("where is order 123-4") == "where is order #-#"
    assert normalise("ｗｈｅｒｅ　is it") == "where is it"  # NFKC: full-width letters and spaces
    assert normalise("주문 어디예요?") == "주문 어디예요"


def test_capture_decision(settings):
    assert capture_for(routed(), "m-1", settings).reason == "fallback"
    low = capture_for(routed("where is my order maybe", route="order_status", score=0.6), "m-1", settings)
    assert low.reason == "low_confidence" and low.model_version == "m-1"
    assert capture_for(routed("where is my order", route="order_status", score=0.9), "m-1", settings) is None
    assert capture_for(routed("20261119-0042", route="order_status", score=0.2, slot_filled="order_number"),
                       "m", settings) is None, "a message that filled a pending slot is not a miss"
    assert capture_for(routed("", route="unsupported"), "m", settings) is None
    # no model version from Azure CLU: the deployment name stands in
    assert capture_for(routed(), None, settings).model_version == settings.intent_deployment_name


def test_the_threshold_is_a_validated_setting():
    assert load_settings({**sample_values(), "REVIEW_CONFIDENCE_THRESHOLD": "0.9"}).settings \
        .review_confidence_threshold == 0.9
    with pytest.raises(Exception, match="REVIEW_CONFIDENCE_THRESHOLD"):
        load_settings({**sample_values(), "REVIEW_CONFIDENCE_THRESHOLD": "1.5"})


def test_captures_fold_into_one_item_with_a_count_and_first_and_last_seen():
    store, clock = InMemoryReviewStore(), iter([1000, 2000, 3000]).__next__
    deps = ReviewDeps(store, Redactor("off"))
    record(capture("Waiting for ages for my kettle!", 1, "u-1"), deps, clock=clock)
    record(capture("waiting for ages for my kettle", 2, "u-2"), deps, clock=clock)
    again = record(capture("waiting for ages for my kettle", 2, "u-2"), deps, clock=clock)  # a redelivery
    assert again is None
    [item] = store.recent()
    assert item.count == 2 and item.first_seen_ms == 1000 and item.last_seen_ms == 2000
    assert item.text == "Waiting for ages for my kettle!" and item.users == {"u-1": 1, "u-2": 1}
    assert item.reasons == {"fallback": 2} and item.model_versions == ["m-1"] and item.top_intent == "None"


@pytest.mark.parametrize("mode", ["mask", "strict"])
def test_pii_modes(mode):
    store = InMemoryReviewStore()
    redactor = Redactor(mode, KEY)
    deps = ReviewDeps(store, redactor, KEY)
    record(capture("my phone is 010-1234-5678 call me", 1, "u-1"), deps)
    record(capture("my phone is 010-9999-0000 call me", 2, "u-1"), deps)
    [item] = store.recent()
    assert item.count == 2 and list(item.users) == [redactor.id("u-1")] and "u-1" not in item.users
    if mode == "mask":
        assert item.text == "my phone is ############# call me"
    else:
        assert item.text is None and item.pii_mode == "strict", "strict: no text stored, only counts"
        assert item.id != item_id("en", normalise("my phone is 010-1234-5678 call me"), Redactor("off"))


def test_decide_reopen_and_captures_after_a_decision():
    store = InMemoryReviewStore()
    deps = ReviewDeps(store, Redactor("off"))
    item = record(capture(), deps)
    decided = decide(store, item.id, "assigned", "editor", intent="OrderStatus", changed="added to OrderStatus")
    assert decided.status == "assigned" and decided.decision.intent == "OrderStatus"
    record(capture(message_id=9), deps)
    assert store.get(item.id).seen_since_decision == 1 and store.get(item.id).status == "assigned"
    assert reopen(store, item.id).status == "open"
    with pytest.raises(ReviewNotFound):
        decide(store, "nope", "dismissed", "editor")


def test_forget_user_removes_their_share_and_items_only_they_produced():
    store = InMemoryReviewStore()
    deps = ReviewDeps(store, Redactor("off"))
    record(capture("waiting for ages for my kettle", 1, "u-1"), deps)
    record(capture("waiting for ages for my kettle", 2, "u-2"), deps)
    record(capture("my own secret words", 3, "u-1"), deps)
    gone = forget_user(store, "u-1")
    assert (gone.items_deleted, gone.items_updated, gone.occurrences_removed) == (1, 1, 2)
    [left] = store.recent()
    assert left.count == 1 and left.users == {"u-2": 1}
    assert forget_user(store, "u-1").occurrences_removed == 0  # idempotent


def test_the_intent_stage_returns_the_capture_with_the_model_version(services, intent):
    intent.predictions["waiting for ages for my kettle"] = clu_prediction("None", 0.89)
    result = run(inbound("waiting for ages for my kettle"), services.intent_stage())
    assert result.routed.route == "fallback" and result.review.reason == "fallback"
    intent.predictions["where is my order"] = clu_prediction("OrderStatus", 0.95)
    assert run(inbound("where is my order", 2), services.intent_stage()).review is None
