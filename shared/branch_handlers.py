"""Branch handlers: the business logic of each route.

Each handler is a pure function ``(message, state, context) -> Outcome`` that
may change the user's state (slots, handoff) and names the catalog text to
answer with. :func:`handle` runs the route's handler inside one optimistic
state update (ETag), records the turn in the bounded history and returns the
:class:`~shared.models.ReplyMessage` for the reply queue (None: stay silent).

A message already answered (a queue redelivery) gets the recorded reply again
without running the handler twice; the reply sender's sent records and
``dedup_id`` keep SendBird from showing it twice. Messages are handled in the
order each user sent them (see :func:`handle`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import quote

from shared.catalog import ResponseCatalog
from shared.language import detect_language
from shared.models import InboundMessage, ReplyMessage, Route, RoutedMessage, now_ms
from shared.settings import Settings
from shared.state import APOLOGY_KEY, StateStore, UserState, apology_dedup_id, reply_dedup_id
from shared.telemetry import DISABLED, Telemetry

log = logging.getLogger(__name__)

#: How many intents a fallback reply offers, and the least confidence score (0..1) worth offering.
MAX_SUGGESTIONS, MIN_SUGGESTION_SCORE = 3, 0.05


@dataclass(frozen=True)
class Outcome:
    """Which catalog text to answer with, and its parameters."""

    reply_key: str
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    settings: Settings
    catalog: ResponseCatalog
    now_ms: int


def greeting(msg: RoutedMessage, state: UserState, ctx: Context) -> Outcome:
    return Outcome("greeting.hello")


def help_(msg: RoutedMessage, state: UserState, ctx: Context) -> Outcome:
    return Outcome("help.capabilities")


def order_status(msg: RoutedMessage, state: UserState, ctx: Context) -> Outcome:
    number = msg.entity("OrderNumber")
    if number is None:
        state.pending_slot = "order_number"
        return Outcome("order_status.ask_number")
    state.pending_slot = None
    url = ctx.settings.order_tracking_url.format(order_number=quote(number.text, safe=""))
    return Outcome("order_status.found", {"order_number": number.text, "tracking_url": url})


def product_search(msg: RoutedMessage, state: UserState, ctx: Context) -> Outcome:
    category = msg.entity("ProductCategory")
    if category is None:
        state.pending_slot = "product_category"
        return Outcome("product_search.ask_category")
    state.pending_slot = None
    key = category.key or category.text
    url = ctx.settings.product_search_url.format(category=quote(key, safe=""))
    return Outcome("product_search.results", {"category": category.text, "search_url": url})


def handoff(msg: RoutedMessage, state: UserState, ctx: Context) -> Outcome:
    state.pending_slot = None
    state.handoff_until_ms = ctx.now_ms + ctx.settings.handoff_reset_seconds * 1000
    return Outcome("handoff.connecting")


def goodbye(msg: RoutedMessage, state: UserState, ctx: Context) -> Outcome:
    state.pending_slot = None
    return Outcome("goodbye.thanks")


def fallback(msg: RoutedMessage, state: UserState, ctx: Context) -> Outcome:
    """A clarifying question offering the best-scoring intents the bot can handle."""
    names = [ctx.catalog.render(f"intent.{i.category}", msg.language)
             for i in msg.intents
             if i.confidence_score >= MIN_SUGGESTION_SCORE and ctx.catalog.has(f"intent.{i.category}")]
    if not names:
        return Outcome("fallback.generic")
    return Outcome("fallback.suggest", {"suggestions": ", ".join(names[:MAX_SUGGESTIONS])})


def unsupported(msg: RoutedMessage, state: UserState, ctx: Context) -> Outcome:
    return Outcome("unsupported.file")


HANDLERS: dict[Route, Callable[[RoutedMessage, UserState, Context], Outcome]] = {
    Route.GREETING: greeting,
    Route.HELP: help_,
    Route.ORDER_STATUS: order_status,
    Route.PRODUCT_SEARCH: product_search,
    Route.HANDOFF: handoff,
    Route.GOODBYE: goodbye,
    Route.FALLBACK: fallback,
    Route.UNSUPPORTED: unsupported,
}


#: Delay before a message held back by an earlier one is looked at again (Storage queues count in seconds).
ORDER_RETRY_DELAY_SECONDS = 1


def handle(msg: RoutedMessage, *, state_store: StateStore, catalog: ResponseCatalog, settings: Settings,
           reschedule: Callable[[RoutedMessage, float], None], clock: Callable[[], int] = now_ms,
           telemetry: Telemetry = DISABLED) -> ReplyMessage | None:
    """Run ``msg.route``'s handler in one state update; return the reply to enqueue, or None.

    - Idempotent: a turn already answered re-emits its recorded reply (same ``dedup_id``) instead of
      running the handler again; a silent turn stays silent. A turn that got an apology (its message
      was poisoned) or whose reply failed is answered for real only when the message is a replay.
    - Ordered per user: while an earlier message of the same user is not final (sent, silent or failed),
      this one is re-queued with ``reschedule(msg, delay_seconds)`` and None is returned, for at most
      ``ORDER_MAX_WAIT_SECONDS`` after the intake received it; then it is handled anyway.

    Errors: :class:`~shared.errors.TransientError` from the state store (after ETag retries).
    """
    held_back: list[int] = []
    handled: list[str] = []  # reply key, when the handler ran in the write that succeeded

    def mutate(state: UserState) -> ReplyMessage | None:
        held_back.clear()
        handled.clear()
        now = clock()
        turn = state.turn_for(msg.message_id)
        if turn is None:  # evicted from the bounded history, or state reset: admit it now
            turn = state.admit(msg.message_id, msg.correlation_id, msg.received_at_ms, settings.state_history_limit,
                               channel_url=msg.channel_url)
        if turn.status == "silent":
            return None
        if (turn.apologized or turn.status == "failed") and not msg.replayed:
            return None  # the user was told it failed; only an explicit replay answers it now
        if not turn.answered:
            waiting_for = state.pending_before(turn)
            if waiting_for and now - msg.received_at_ms < settings.order_max_wait_seconds * 1000:
                held_back.extend(t.seq for t in waiting_for)
                return None
            if state.is_handed_off(now):
                turn.status = "silent"  # handed off by an earlier message after this one was routed
                return None
            outcome = HANDLERS[msg.route](msg, state, Context(settings, catalog, now))
            handled.append(outcome.reply_key)
            turn.reply_text = catalog.render(outcome.reply_key, msg.language, **outcome.params)
            turn.reply_key = outcome.reply_key
            turn.status, turn.at_ms, turn.route = "answered", now, msg.route.value
            turn.intent, turn.confidence_score = msg.top_intent, msg.confidence_score
            state.language = msg.language
            state.channel_url = msg.channel_url
        return ReplyMessage(**msg.next_hop(), text=turn.reply_text, language=msg.language, route=msg.route,
                            top_intent=msg.top_intent, confidence_score=msg.confidence_score,
                            reply_key=turn.reply_key, dedup_id=reply_dedup_id(msg.message_id), seq=turn.seq)

    reply = state_store.update(msg.user_id, msg.channel_url, mutate)
    if handled == ["handoff.connecting"]:
        telemetry.metric("handoff_count", 1)
    if held_back:
        log.info("message_id=%s (seq %d) of %s waits for earlier message(s) seq %s", msg.message_id, msg.seq,
                 msg.user_id, held_back)
        reschedule(msg.model_copy(update={"order_waits": msg.order_waits + 1}), ORDER_RETRY_DELAY_SECONDS)
    return reply


def apology_reply(msg: InboundMessage | RoutedMessage, catalog: ResponseCatalog, settings: Settings) -> ReplyMessage:
    """The reply a user gets when their message could not be processed (it was poisoned): never silence."""
    language = getattr(msg, "language", None) or detect_language(msg.text) or settings.default_language
    return ReplyMessage(**msg.next_hop(), text=catalog.render(APOLOGY_KEY, language), language=language,
                        route=getattr(msg, "route", None), reply_key=APOLOGY_KEY,
                        dedup_id=apology_dedup_id(msg.message_id), seq=getattr(msg, "seq", 0))
