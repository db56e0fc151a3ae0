"""Intent stage: load the user's state, classify the utterance, pick the branch route.

Input: :class:`~shared.models.InboundMessage` (queue ``chat-inbound``).
Output: a :class:`~shared.models.RoutedMessage` for ``route-<route>``, or None
when the bot must stay silent (the conversation is handed off to a human).
Errors: :class:`~shared.errors.TransientError` / :class:`~shared.errors.PermanentError`
from the state store and the intent client propagate to the caller.
"""

from __future__ import annotations

import logging
from typing import Callable

from shared.clients.intent import IntentClient
from shared.language import detect_language
from shared.models import InboundMessage, Route, RoutedMessage, now_ms
from shared.routing import choose_route
from shared.settings import Settings
from shared.state import StateStore

log = logging.getLogger(__name__)

#: How many intents and entities travel to the branch handler.
MAX_INTENTS, MAX_ENTITIES = 10, 20


def classify(msg: InboundMessage, *, state_store: StateStore, intent_client: IntentClient, settings: Settings,
             clock: Callable[[], int] = now_ms) -> RoutedMessage | None:
    """Route one inbound message (see module docstring). ``clock`` returns epoch ms."""
    state = state_store.get_or_create(msg.user_id, msg.channel_url)
    if state.is_handed_off(clock()):
        log.info("conversation of %s is handed off until %s: bot stays silent (message_id=%s)",
                 msg.user_id, state.handoff_until_ms, msg.message_id)
        return None
    if msg.message_type == "FILE":
        language = state.language or settings.default_language
        return RoutedMessage(**msg.next_hop(), route=Route.UNSUPPORTED, language=language, top_intent=None)

    language = detect_language(msg.text) or state.language or settings.default_language
    prediction = intent_client.analyze(msg.text, language, participant_id=msg.user_id,
                                       item_id=str(msg.message_id), request_id=msg.correlation_id)
    route, slot_filled = choose_route(prediction, state.pending_slot, settings.intent_confidence_threshold)
    return RoutedMessage(
        **msg.next_hop(), route=route, text=msg.text, language=language,
        top_intent=prediction.top_intent, confidence_score=prediction.confidence_score,
        intents=prediction.intents[:MAX_INTENTS], entities=prediction.entities[:MAX_ENTITIES],
        slot_filled=slot_filled,
    )
