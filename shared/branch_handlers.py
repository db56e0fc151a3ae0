"""Branch handlers: the business logic of each route, and the route declarations.

Each handler is a pure function ``(message, state, context) -> Answer`` that may change the user's state
(slots, handoff) and names the catalog text to answer with. Each built-in route is declared once, below its
handler, in the route registry (:mod:`shared.routes`). :func:`handle` runs the route's handler inside one
optimistic state update (ETag), records the answer in the turn together with the reply sender's send claim (one
write: the claim is not a write of its own) and returns the :class:`~shared.models.ReplyMessage` for the reply
queue (None: stay silent). The write is a partial update on the version the intent stage's admission left
(carried in the routed message, sealed): no read on the happy path; when the document changed since, the update
reads it and runs again (ETag). The reply carries the version this write returned, so that the reply sender
sends and marks it sent without a read.

A message already answered (a queue redelivery) gets the recorded reply again without running the handler
twice; the reply sender's sent records and ``dedup_id`` keep SendBird from showing it twice. Messages are
handled in the order each user sent them (see :func:`handle`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from shared.catalog import ResponseCatalog
from shared.errors import PermanentError
from shared.language import detect_language
from shared.models import InboundMessage, ReplyMessage, RoutedMessage, now_ms
from shared.ports import QueuePort, StateStore, TelemetryPort
from shared.routes import FALLBACK, ROUTES, UNSUPPORTED, RouteSpec
from shared.settings import Settings
from shared.state import APOLOGY_KEY, SendClaim, Turn, UserState, apology_dedup_id, reply_dedup_id
from shared.telemetry import DISABLED

log = logging.getLogger(__name__)

#: How many intents a fallback reply offers, and the least confidence score (0..1) worth offering.
MAX_SUGGESTIONS, MIN_SUGGESTION_SCORE = 3, 0.05
#: Delay before a message held back by an earlier one is looked at again (Storage queues count in seconds).
ORDER_RETRY_DELAY_SECONDS = 1


@dataclass(frozen=True)
class Answer:
    """Which catalog text to answer with, and its parameters."""

    reply_key: str
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    settings: Settings
    catalog: ResponseCatalog
    now_ms: int


# --------------------------------------------------------------------------- handlers and their routes
def greeting(msg: RoutedMessage, state: UserState, ctx: Context) -> Answer:
    return Answer("greeting.hello")


def help_(msg: RoutedMessage, state: UserState, ctx: Context) -> Answer:
    return Answer("help.capabilities")


def order_status(msg: RoutedMessage, state: UserState, ctx: Context) -> Answer:
    number = msg.entity("OrderNumber")
    if number is None:
        state.pending_slot = "order_number"
        return Answer("order_status.ask_number")
    state.pending_slot = None
    url = ctx.settings.order_tracking_url.format(order_number=quote(number.text, safe=""))
    return Answer("order_status.found", {"order_number": number.text, "tracking_url": url})


def product_search(msg: RoutedMessage, state: UserState, ctx: Context) -> Answer:
    category = msg.entity("ProductCategory")
    if category is None:
        state.pending_slot = "product_category"
        return Answer("product_search.ask_category")
    state.pending_slot = None
    key = category.key or category.text
    url = ctx.settings.product_search_url.format(category=quote(key, safe=""))
    return Answer("product_search.results", {"category": category.text, "search_url": url})


def handoff(msg: RoutedMessage, state: UserState, ctx: Context) -> Answer:
    state.pending_slot = None
    state.handoff_until_ms = ctx.now_ms + ctx.settings.handoff_reset_seconds * 1000
    return Answer("handoff.connecting")


def goodbye(msg: RoutedMessage, state: UserState, ctx: Context) -> Answer:
    state.pending_slot = None
    return Answer("goodbye.thanks")


def fallback(msg: RoutedMessage, state: UserState, ctx: Context) -> Answer:
    """A clarifying question offering the best-scoring intents the bot can handle."""
    names = [ctx.catalog.render(f"intent.{i.category}", msg.language)
             for i in msg.intents
             if i.confidence_score >= MIN_SUGGESTION_SCORE and ctx.catalog.has(f"intent.{i.category}")]
    if not names:
        return Answer("fallback.generic")
    return Answer("fallback.suggest", {"suggestions": ", ".join(names[:MAX_SUGGESTIONS])})


def unsupported(msg: RoutedMessage, state: UserState, ctx: Context) -> Answer:
    return Answer("unsupported.file")


GREETING = ROUTES.register(RouteSpec("greeting", greeting, ("greeting.hello",), intents=("Greeting",)))
HELP = ROUTES.register(RouteSpec("help", help_, ("help.capabilities",), intents=("Help",)))
ORDER_STATUS = ROUTES.register(RouteSpec(
    "order_status", order_status, ("order_status.ask_number", "order_status.found"), intents=("OrderStatus",),
    slot="order_number", slot_entity="OrderNumber"))
PRODUCT_SEARCH = ROUTES.register(RouteSpec(
    "product_search", product_search, ("product_search.ask_category", "product_search.results"),
    intents=("ProductSearch",), slot="product_category", slot_entity="ProductCategory"))
HANDOFF = ROUTES.register(RouteSpec("handoff", handoff, ("handoff.connecting",), intents=("HumanHandoff",)))
GOODBYE = ROUTES.register(RouteSpec("goodbye", goodbye, ("goodbye.thanks",), intents=("ThanksGoodbye",)))
ROUTES.register(RouteSpec(FALLBACK, fallback, ("fallback.generic", "fallback.suggest")))
ROUTES.register(RouteSpec(UNSUPPORTED, unsupported, ("unsupported.file",)))


# --------------------------------------------------------------------------- running a handler
@dataclass
class _Decision:
    """What one run of the state update decided (the update may run again after an ETag conflict)."""

    reply: ReplyMessage | None = None
    held_back_by: list[int] = field(default_factory=list)
    answered_with: str | None = None
    claimed: bool = False


def decide(msg: RoutedMessage, state: UserState, *, catalog: ResponseCatalog, settings: Settings,
           now: int) -> _Decision:
    """The state change and reply for ``msg`` (pure; runs inside the ETag-guarded update, maybe more than once)."""
    turn = state.turn_for(msg.message_id)
    if turn is None:  # evicted from the bounded history, or state reset: admit it now
        turn = state.admit(msg.message_id, msg.correlation_id, msg.received_at_ms, settings.state_history_limit,
                           channel_url=msg.channel_url)
    if turn.status == "silent":
        return _Decision()
    if (turn.apologized or turn.status == "failed") and not msg.replayed:
        return _Decision()  # the user was told it failed; only an explicit replay answers it now
    answered_with, claimed = None, False
    if not turn.answered:
        waiting_for = state.pending_before(turn)
        if waiting_for and now - msg.received_at_ms < settings.order_max_wait_seconds * 1000:
            return _Decision(held_back_by=[t.seq for t in waiting_for])
        if state.is_handed_off(now):
            turn.status = "silent"  # handed off by an earlier message after this one was routed
            return _Decision()
        answered_with = _run_handler(msg, state, turn, Context(settings, catalog, now))
        claimed = _claim_for_sender(turn, msg.message_id, settings, now)
    reply = ReplyMessage.following(msg, text=turn.reply_text, language=msg.language, route=msg.route,
                                   top_intent=msg.top_intent, confidence_score=msg.confidence_score,
                                   reply_key=turn.reply_key, dedup_id=reply_dedup_id(msg.message_id), seq=turn.seq)
    return _Decision(reply=reply, answered_with=answered_with, claimed=claimed)


def _claim_for_sender(turn: Turn, message_id: int, settings: Settings, now: int) -> bool:
    """Take the reply sender's send claim on ``turn`` in the handler's own write (the claim of
    :func:`shared.reply_sender.claim`, ``since_ms`` = now), unless another live claim is there (an apology being
    sent: the reply sender then decides as before). True when taken."""
    live = turn.sending is not None and now - turn.sending.since_ms < settings.reply_send_lease_seconds * 1000
    if live:
        return False
    turn.sending = SendClaim(dedup_id=reply_dedup_id(message_id), since_ms=now)
    return True


def _run_handler(msg: RoutedMessage, state: UserState, turn: Turn, ctx: Context) -> str:
    if msg.route not in ROUTES:
        raise PermanentError(f"unknown route {msg.route!r}; this build has {[r.name for r in ROUTES]}")
    answer = ROUTES.get(msg.route).handler(msg, state, ctx)
    turn.reply_text = ctx.catalog.render(answer.reply_key, msg.language, **answer.params)
    turn.reply_key = answer.reply_key
    turn.status, turn.at_ms, turn.route = "answered", ctx.now_ms, msg.route
    turn.intent, turn.confidence_score = msg.top_intent, msg.confidence_score
    state.language = msg.language
    state.channel_url = msg.channel_url
    return answer.reply_key


@dataclass(frozen=True)
class BranchDeps:
    """What the branch handlers need: the state store, the queues (to hold a message back), the catalog, the
    settings and telemetry."""

    state_store: StateStore
    queues: QueuePort
    catalog: ResponseCatalog
    settings: Settings
    telemetry: TelemetryPort = DISABLED


def handle(msg: RoutedMessage, deps: BranchDeps, *, clock: Callable[[], int] = now_ms) -> ReplyMessage | None:
    """Run ``msg.route``'s handler in one state update; return the reply to enqueue, or None.

    - One write (a PATCH with ``If-Match`` on the admission's version carried by ``msg``, no read; else
      read-modify-write): the answer, the state changes of the handler and the reply sender's send claim; the
      returned reply carries the version after it (only when this write took the claim).

    - Idempotent: a turn already answered re-emits its recorded reply (same ``dedup_id``) instead of
      running the handler again; a silent turn stays silent. A turn that got an apology (its message
      was poisoned) or whose reply failed is answered for real only when the message is a replay.
    - Ordered per user: while an earlier message of the same user is not final (sent, silent or failed),
      this one is re-queued on its route's queue, ``ORDER_RETRY_DELAY_SECONDS`` later, and None is returned, for
      at most ``ORDER_MAX_WAIT_SECONDS`` after the intake received it; then it is handled anyway.

    Errors: :class:`~shared.errors.TransientError` from the state store (after ETag retries);
    :class:`~shared.errors.PermanentError` for an unknown route or a catalog text missing (poisoned at once).
    """
    decision, version = deps.state_store.update_versioned(msg.user_id, msg.channel_url, lambda s: decide(
        msg, s, catalog=deps.catalog, settings=deps.settings, now=clock()),
        base=msg.state_version, keep_turn=msg.message_id)
    if decision.answered_with == "handoff.connecting":
        deps.telemetry.metric("handoff_count", 1)
    if decision.held_back_by:
        log.info("message_id=%s (seq %d) waits for earlier message(s) seq %s", msg.message_id, msg.seq,
                 decision.held_back_by)
        later = msg.model_copy(update={"order_waits": msg.order_waits + 1, "state_version": None})
        deps.queues.send(ROUTES.get(msg.route).queue, later.to_queue_text(), delay_seconds=ORDER_RETRY_DELAY_SECONDS)
    if decision.reply is not None and decision.claimed:
        return decision.reply.model_copy(update={"state_version": version})
    return decision.reply


def apology_reply(msg: InboundMessage | RoutedMessage | ReplyMessage, catalog: ResponseCatalog,
                  settings: Settings) -> ReplyMessage:
    """The reply a user gets when their message could not be processed or answered (it was poisoned): never
    silence. In the message's language (else the text's, else the default); ``dedup_id`` ``apology-<message_id>``."""
    language = getattr(msg, "language", None) or detect_language(getattr(msg, "text", "")) \
        or settings.default_language
    return ReplyMessage.following(msg, text=catalog.render(APOLOGY_KEY, language), language=language,
                                  route=getattr(msg, "route", None), reply_key=APOLOGY_KEY,
                                  dedup_id=apology_dedup_id(msg.message_id), seq=getattr(msg, "seq", 0))
