"""Choosing a branch route from a CLU prediction, the confidence threshold and the pending slot."""

from __future__ import annotations

from shared.clients.intent import IntentPrediction
from shared.models import Route
from shared.state import SLOT_ENTITIES

#: CLU intent category -> route. Any other intent (including CLU's ``None``) goes to the fallback.
INTENT_ROUTES: dict[str, Route] = {
    "Greeting": Route.GREETING,
    "Help": Route.HELP,
    "OrderStatus": Route.ORDER_STATUS,
    "ProductSearch": Route.PRODUCT_SEARCH,
    "HumanHandoff": Route.HANDOFF,
    "ThanksGoodbye": Route.GOODBYE,
}

#: The route that fills each slot.
SLOT_ROUTES: dict[str, Route] = {"order_number": Route.ORDER_STATUS, "product_category": Route.PRODUCT_SEARCH}


def choose_route(prediction: IntentPrediction, pending_slot: str | None, threshold: float) -> tuple[Route, str | None]:
    """Return ``(route, slot_filled)``.

    1. If the state waits for a slot (e.g. an order number) and the utterance
       has an entity of that slot's category, the slot's route wins whatever
       the intent ("20261119-0042" alone classifies poorly but answers the question).
    2. Else the top intent's route when its confidence score >= ``threshold`` (0..1).
    3. Else :attr:`Route.FALLBACK` (low confidence, ``None``, or an intent without a route).
    """
    if pending_slot in SLOT_ENTITIES:
        category = SLOT_ENTITIES[pending_slot]
        if any(e.category == category for e in prediction.entities):
            return SLOT_ROUTES[pending_slot], pending_slot
    top = prediction.top_intent
    if top in INTENT_ROUTES and prediction.confidence_score >= threshold:
        return INTENT_ROUTES[top], None
    return Route.FALLBACK, None
