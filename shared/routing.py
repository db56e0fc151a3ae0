"""Choosing a branch route from a CLU prediction, the confidence threshold and the pending slot.

The routes, their intents and their slots come from the route registry (:mod:`shared.routes`).
"""

from __future__ import annotations

from shared.models import IntentPrediction
from shared.routes import FALLBACK, RouteRegistry, routes


def choose_route(prediction: IntentPrediction, pending_slot: str | None, threshold: float,
                 registry: RouteRegistry | None = None) -> tuple[str, str | None]:
    """Return ``(route name, slot_filled)``.

    1. If the state waits for a slot (e.g. an order number) and the utterance has an entity of the category that
       fills it, the slot's route wins whatever the intent ("20261119-0042" alone classifies poorly but answers
       the question).
    2. Else the route of the top intent when its confidence score >= ``threshold`` (0..1).
    3. Else the fallback route (low confidence, ``None``, or an intent without a route).
    """
    registry = registry or routes()
    slot_route = registry.for_slot(pending_slot)
    if slot_route is not None and any(e.category == slot_route.slot_entity for e in prediction.entities):
        return slot_route.name, pending_slot
    top = registry.for_intent(prediction.top_intent)
    if top is not None and prediction.confidence_score >= threshold:
        return top.name, None
    return FALLBACK, None
