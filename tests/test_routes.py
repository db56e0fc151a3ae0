"""The route registry: a route is declared once and everything derives from it (README, "How to add a route").

A throwaway route is registered here through the same mechanism the built-in routes use, a message is sent through
it (intent stage -> its branch handler -> reply sender), and the function app indexed with it has its queue binding,
its handler function and its poison trigger.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import pytest

from shared.branch_handlers import Answer
from shared.catalog import ResponseCatalog
from shared.routes import ROUTES, RouteRegistry, RouteSpec, routes
from tests.support.chain import Chain, fake_services
from tests.support.fakes import ScriptedIntentClient, clu_prediction
from tests.support.samples import sample_values

GIFT_TEXTS = {"gift_wrap.offer": {"ko": "선물 포장은 2,000원입니다.", "en": "Gift wrapping is 2,000 won."}}


def gift_wrap(msg, state, ctx):
    return Answer("gift_wrap.offer")


@pytest.fixture
def gift_route():
    spec = ROUTES.register(RouteSpec("gift_wrap", gift_wrap, ("gift_wrap.offer",), intents=("GiftWrap",)))
    yield spec
    ROUTES.unregister("gift_wrap")


def test_the_built_in_routes_are_declared_once():
    names = [r.name for r in routes()]
    assert names == ["greeting", "help", "order_status", "product_search", "handoff", "goodbye", "fallback",
                     "unsupported"]
    assert routes().for_intent("OrderStatus").name == "order_status" and routes().for_intent("None") is None
    assert routes().for_slot("product_category").slot_entity == "ProductCategory"


@pytest.mark.parametrize("spec, problem", [
    (RouteSpec("greeting_again", gift_wrap, (), intents=("Greeting",)), "already lead to route 'greeting'"),
    (RouteSpec("order_again", gift_wrap, (), slot="order_number", slot_entity="OrderNumber"), "slot 'order_number'"),
])
def test_a_route_cannot_take_an_intent_or_slot_that_is_taken(spec, problem):
    with pytest.raises(ValueError, match=problem):
        routes().register(spec)


@pytest.mark.parametrize("name", ["Gift", "gift-wrap", "", "x" * 41])
def test_route_names_name_queues_and_bindings(name):
    with pytest.raises(ValueError, match="route name"):
        RouteSpec(name, gift_wrap, ())


def test_a_registered_route_answers_a_message_end_to_end_in_the_chain(gift_route):
    catalog = ResponseCatalog({**json.loads(ResponseCatalog.load_text()), **GIFT_TEXTS})
    intent = ScriptedIntentClient(default=clu_prediction("GiftWrap", 0.92))
    chain = Chain(fake_services(intent=intent, catalog=catalog))
    routed, reply = chain.say("can you wrap it as a gift?")
    assert routed.route == "gift_wrap" and reply.reply_key == "gift_wrap.offer"
    assert [m["message"] for m in chain.svc.sendbird.messages] == ["Gift wrapping is 2,000 won."]
    assert chain.turn(routed.message_id).route == "gift_wrap"


def test_the_function_app_indexed_with_a_new_route_has_its_binding_handler_and_poison_trigger(gift_route):
    saved = dict(os.environ)
    os.environ.update(sample_values())
    try:
        for name in [m for m in sys.modules if m in ("function_app", "functions") or m.startswith("functions.")]:
            del sys.modules[name]
        app = importlib.import_module("function_app").app
        functions = {f.get_function_name(): json.loads(f.get_function_json()) for f in app.get_functions()}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for name in [m for m in sys.modules if m in ("function_app", "functions") or m.startswith("functions.")]:
            del sys.modules[name]
    intent_outputs = {b["name"]: b["queueName"] for b in functions["intent_stage"]["bindings"] if b["type"] == "queue"}
    assert intent_outputs["to_gift_wrap"] == "route-gift-wrap"
    trigger = next(b for b in functions["route_gift_wrap"]["bindings"] if b["type"] == "queueTrigger")
    assert trigger["queueName"] == "route-gift-wrap"
    assert "poison_route_gift_wrap" in functions


def test_a_registry_of_its_own_drives_the_routing():
    registry = RouteRegistry()
    registry.register(RouteSpec("only", gift_wrap, ("gift_wrap.offer",), intents=("GiftWrap",)))
    from shared.clients.clu import parse_clu_response
    from shared.routing import choose_route
    assert choose_route(parse_clu_response(clu_prediction("GiftWrap", 0.9)), None, 0.5, registry) == ("only", None)
    assert choose_route(parse_clu_response(clu_prediction("Greeting", 0.9)), None, 0.5, registry) == ("fallback", None)
