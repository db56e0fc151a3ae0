"""The editable response catalog: validation of an edit, and the live catalog every worker answers with (a new
version within the refresh interval, a bad one or a store outage never breaks a reply)."""

from __future__ import annotations

import json

import pytest

from shared.catalog import CatalogVersion, LiveCatalog, ResponseCatalog, required_keys, validate_texts
from shared.errors import TransientError
from shared.reply_sender import owned_turn
from shared.routes import routes
from shared.state import APOLOGY_KEY, UserState
from tests.support.fakes import InMemoryCatalogStore
from tests.support.messages import inbound


def shipped() -> dict:
    return json.loads(ResponseCatalog.load_text())


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_shipped_file_is_valid_and_the_keys_come_from_the_route_registry():
    assert validate_texts(shipped()) == []
    keys = required_keys()
    assert set(keys) == {k for r in routes() for k in r.response_keys} | {APOLOGY_KEY}


@pytest.mark.parametrize("edit, problem", [
    (lambda t: t.pop("goodbye.thanks"), "goodbye.thanks: missing"),
    (lambda t: t["goodbye.thanks"].pop("ko"), "goodbye.thanks: the ko text is missing"),
    (lambda t: t["goodbye.thanks"].update(en="   "), "goodbye.thanks: the en text is missing or blank"),
    (lambda t: t["order_status.found"].update(en="Order {order_number} is on its way"),
     "order_status.found: the en text must use the placeholders ['order_number', 'tracking_url'] "
     "(missing {tracking_url})"),
    (lambda t: t["greeting.hello"].update(ko="안녕 {name}"), "greeting.hello: the ko text must use the placeholders "
     "none (unknown {name})"),
    (lambda t: t["greeting.hello"].update(en="Hi {"), "greeting.hello: the en text is not a valid template"),
    (lambda t: t.update({"gift_wrap.offer": {"ko": "a", "en": "b"}}), "gift_wrap.offer: not a response key"),
    (lambda t: t["greeting.hello"].update(fr="Salut"), "greeting.hello: unknown language(s) ['fr']"),
])
def test_validation_names_each_problem(edit, problem):
    texts = shipped()
    edit(texts)
    assert any(p.startswith(problem) for p in validate_texts(texts)), validate_texts(texts)


def test_a_new_intent_display_name_may_be_added():
    assert validate_texts({**shipped(), "intent.GiftWrap": {"ko": "선물 포장", "en": "gift wrapping"}}) == []


def version(n: int, **changes: str) -> CatalogVersion:
    texts = shipped()
    for key, en in changes.items():
        texts[key.replace("_", ".", 1)]["en"] = en
    return CatalogVersion(version=n, texts=texts, author="editor")


def test_the_live_catalog_picks_up_a_new_version_after_the_refresh_interval():
    store, clock = InMemoryCatalogStore(), Clock()
    live = LiveCatalog(ResponseCatalog.load(), store, 5, clock=clock)
    assert live.render("goodbye.thanks", "en") == shipped()["goodbye.thanks"]["en"] and live.version == 0
    store.publish(version(1, goodbye_thanks="Bye for now!"))
    clock.now = 4.9
    assert live.render("goodbye.thanks", "en") != "Bye for now!"  # cached
    clock.now = 5.0
    assert live.render("goodbye.thanks", "en") == "Bye for now!" and live.version == 1
    reads = store.reads
    for _ in range(100):
        live.render("greeting.hello", "en")
    assert store.reads == reads, "one store read per interval, not per reply"


def test_a_bad_version_is_never_used_and_the_last_good_one_stays():
    store, clock = InMemoryCatalogStore(), Clock()
    live = LiveCatalog(ResponseCatalog.load(), store, 1, clock=clock)
    store.publish(version(1, goodbye_thanks="Bye for now!"))
    live.refresh(force=True)
    bad = version(2)
    del bad.texts["order_status.found"]
    store.force_current(bad)  # written around the console's validation
    clock.now = 10
    assert live.render("goodbye.thanks", "en") == "Bye for now!" and live.version == 1
    assert "version 2 refused" in live.last_error and "order_status.found: missing" in live.last_error


def test_a_store_outage_keeps_the_current_texts():
    store, clock = InMemoryCatalogStore(), Clock()
    live = LiveCatalog(ResponseCatalog.load(), store, 1, clock=clock)
    store.publish(version(1, goodbye_thanks="Bye for now!"))
    live.refresh(force=True)
    store.fail_with = TransientError("cosmos down")
    clock.now = 10
    assert live.render("goodbye.thanks", "en") == "Bye for now!" and "unavailable" in live.last_error


def test_an_apology_rendered_before_an_edit_is_still_the_gateways_own(settings):
    store, clock = InMemoryCatalogStore(), Clock()
    live = LiveCatalog(ResponseCatalog.load(), store, 1, clock=clock)
    from shared.branch_handlers import apology_reply
    apology = apology_reply(inbound("hi", 5), live, settings)
    store.publish(version(1, apology_error="We are sorry, please try again."))
    clock.now = 10
    assert live.render(APOLOGY_KEY, "en") == "We are sorry, please try again."
    state = UserState.new("u-1", "ch-1", 0)
    assert owned_turn(state, apology, settings, live).message_id == 5  # not refused as a forged apology
