"""Branch handlers: the business logic of each route, and the route declarations.

Each handler is a pure function ``(message, state, context) -> Answer`` that may change the user's state
(slots, handoff) and names the catalog text to answer with. Each built-in route is declared once, below its
handler, in the route registry (:mod:`shared.routes`). :func:`handle` runs the route's handler inside one
optimistic state update (ETag), records the answer in the turn with the reply's send claim and returns the
:class:`~shared.models.ReplyMessage` for the reply queue (None: stay silent). It decides on the version the intent
stage's admission left (carried in the routed message, sealed): no read. For the first delivery of the message's
chain (the admission took the reply's claim for it) it does not write either: the answer travels unwritten with
the reply and the reply sender writes it with the "sent" mark (one write, see :func:`_deferred`); otherwise it
writes (a PATCH conditional on the version's ETag; when the document changed since, the update reads it and runs
again) and the reply carries the version that write returned.

A message already answered (a queue redelivery) gets the recorded reply again without running the handler
twice; the reply sender's sent records and ``dedup_id`` keep SendBird from showing it twice. Messages are
handled in the order each user sent them (see :func:`handle`): a message whose user's earlier turn is not final
yet first waits for it inside its invocation (back-off re-reads of the user's document,
:data:`ORDER_WAIT_BACKOFF_SECONDS`), and only then is re-queued (:func:`retry_delay`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from shared.catalog import ResponseCatalog
from shared.errors import GatewayError, PermanentError
from shared.language import detect_language
from shared.models import InboundMessage, ReplyMessage, RoutedMessage, now_ms
from shared.ports import QueuePort, StateStore, TelemetryPort
from shared.routes import FALLBACK, ROUTES, UNSUPPORTED, RouteSpec
from shared.settings import Settings
from shared.processing import dequeue_count
from shared.state import APOLOGY_KEY, SendClaim, StateVersion, Turn, UserState, apology_dedup_id, reply_dedup_id
from shared.telemetry import DISABLED

log = logging.getLogger(__name__)

#: How many intents a fallback reply offers, and the least confidence score (0..1) worth offering.
MAX_SUGGESTIONS, MIN_SUGGESTION_SCORE = 3, 0.05
#: Pauses (seconds) between the re-reads of the user's document with which a message held back by an earlier one
#: waits for it inside its invocation, before it is re-queued: ~4 s in all, at most 10 point reads (a Cosmos DB read
#: of a few ms that writes nothing while the earlier turn is not final). A re-queue costs far more: a put with the
#: SDK (no wake-up), the wait for a poll, a receive, a dispatch to a worker, a delete and the whole invocation again;
#: above the chain's ceiling nearly every message found its predecessor unfinished and was invoked 3-7 times (bench
#: README, "Ordering hold-backs under overload"). The pauses start short (the earlier turn usually needs one or two
#: hops more: its handler, the reply sender) and stay at 0.5 s at most: a user's answers go out one after the other,
#: so the time it takes to notice that the earlier one is final is paid once per message of a busy user.
ORDER_WAIT_BACKOFF_SECONDS: tuple[float, ...] = (0.1, 0.2, 0.4, *(0.5,) * 7)
#: Messages that wait that way at once per worker process, at most: a waiting invocation holds a thread of the
#: worker's pool (PYTHON_THREADPOOL_THREAD_COUNT 96, shared with the intake, the intent stage and the reply sender,
#: which must keep finishing the earlier turns) and one of its function's concurrent messages (batchSize +
#: newBatchThreshold); the host renews its lease meanwhile. Beyond that a held-back message is re-queued at once.
ORDER_WAITERS_PER_PROCESS = 32
#: Delay before a message still held back after the wait (or with no waiting slot free) is looked at again, per
#: earlier turn not final yet, at most :data:`ORDER_RETRY_MAX_DELAY_SECONDS` (Storage queues count in seconds):
#: each of those earlier answers goes out before this one, one after the other.
ORDER_RETRY_DELAY_SECONDS = 1
ORDER_RETRY_MAX_DELAY_SECONDS = 5
_waiters = threading.BoundedSemaphore(ORDER_WAITERS_PER_PROCESS)
#: Share of the chain's claim lease (from the admission) within which the handler defers its write to the reply
#: sender's (the reply sender sends without a read only within half of it: later, the answer is written now).
DEFER_LEASE_SHARE = 0.25


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
           now: int, owner_since: int | None = None, renew_own: bool = True) -> _Decision:
    """The state change and reply for ``msg`` (pure; runs inside the ETag-guarded update, maybe more than once).
    ``owner_since``: ``since_ms`` of the send claim the admission took for this message's chain, when ``msg`` is
    that chain's (:func:`_chain_claim`)."""
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
        claimed = _claim_for_sender(turn, msg.message_id, settings, now, owner_since, renew_own)
    reply = ReplyMessage.following(msg, text=turn.reply_text, language=msg.language, route=msg.route,
                                   top_intent=msg.top_intent, confidence_score=msg.confidence_score,
                                   reply_key=turn.reply_key, dedup_id=reply_dedup_id(msg.message_id), seq=turn.seq)
    return _Decision(reply=reply, answered_with=answered_with, claimed=claimed)


def _claim_for_sender(turn: Turn, message_id: int, settings: Settings, now: int, owner_since: int | None,
                      renew_own: bool) -> bool:
    """The reply sender's send claim on ``turn`` for this answer: the chain's own (taken at admission; renewed as a
    handler's claim when ``renew_own``, i.e. the handler writes now), else taken now in the handler's write
    (``since_ms`` = now) unless another live claim is there (an apology being sent, or another chain's: the reply
    sender then decides as before). True when the reply holds it."""
    own = turn.sending is not None and owner_since is not None and \
        (turn.sending.dedup_id, turn.sending.since_ms) == (reply_dedup_id(message_id), owner_since)
    if own and not renew_own:
        return True
    if not own and turn.sending is not None and now < turn.sending.until_ms(settings.reply_send_lease_seconds * 1000):
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


def handle(msg: RoutedMessage, deps: BranchDeps, *, clock: Callable[[], int] = now_ms,
           sleep: Callable[[float], None] = time.sleep) -> ReplyMessage | None:
    """Run ``msg.route``'s handler in one state update; return the reply to enqueue, or None.

    - The answer, the state changes of the handler and the reply's send claim are one state update: deferred to
      the reply sender's write for the chain's first delivery (:func:`_deferred`), else written now (a PATCH with
      ``If-Match`` on the admission's version carried by ``msg``, no read; else read-modify-write); the returned
      reply carries the version (only when the reply holds the claim). A failure releases the chain's claim.

    - Idempotent: a turn already answered re-emits its recorded reply (same ``dedup_id``) instead of
      running the handler again; a silent turn stays silent. A turn that got an apology (its message
      was poisoned) or whose reply failed is answered for real only when the message is a replay.
    - Ordered per user: while an earlier message of the same user is not final (sent, silent or failed), this one
      waits: first here, re-reading the user's document after each pause of :data:`ORDER_WAIT_BACKOFF_SECONDS`
      (``sleep``; a read that still finds the earlier turn unfinished writes nothing) and answering as soon as it
      is final, in the same invocation; if it is still not final after the last pause (or
      :data:`ORDER_WAITERS_PER_PROCESS` messages wait already), the message is re-queued on its route's queue,
      :func:`retry_delay` later (1 s per earlier turn not final, at most 5 s), and None is returned. At most
      ``ORDER_MAX_WAIT_SECONDS`` after the intake received it; then it is handled anyway. Under overload this keeps
      the work per message bounded (about one invocation each: 1.15-1.5 per message at 50 msg/s, bench README) instead
      of one more invocation per second of backlog ahead of it.

    Errors: :class:`~shared.errors.TransientError` from the state store (after ETag retries);
    :class:`~shared.errors.PermanentError` for an unknown route or a catalog text missing (poisoned at once).
    """
    owner_since = _chain_claim(msg, deps)

    def run(state: UserState, renew_own: bool = True) -> _Decision:
        return decide(msg, state, catalog=deps.catalog, settings=deps.settings, now=clock(), owner_since=owner_since,
                      renew_own=renew_own)

    try:
        deferred = _deferred(msg, deps, lambda state: run(state, False)) if owner_since is not None else None
        if deferred is not None:
            decision, version = deferred
        else:
            decision, version = deps.state_store.update_versioned(msg.user_id, msg.channel_url, run,
                                                                  base=msg.state_version, keep_turn=msg.message_id)
        if decision.held_back_by and _waiters.acquire(blocking=False):
            try:
                decision, version = _wait_for_earlier(msg, deps, run, decision, version, sleep)
            finally:
                _waiters.release()
    except Exception:
        if owner_since is not None:  # this chain will not send: an apology need not wait for its claim
            _release_chain_claim(msg, owner_since, deps)
        raise
    if decision.answered_with == "handoff.connecting":
        deps.telemetry.metric("handoff_count", 1)
    if decision.held_back_by:
        log.info("message_id=%s (seq %d) still waits for earlier message(s) seq %s: re-queued", msg.message_id,
                 msg.seq, decision.held_back_by)
        later = msg.model_copy(update={"order_waits": msg.order_waits + 1})  # its version: the chain's claim
        deps.queues.send(ROUTES.get(msg.route).queue, later.to_queue_text(), delay_seconds=retry_delay(decision))
    if decision.reply is not None and decision.claimed:
        return decision.reply.model_copy(update={"state_version": version})
    return decision.reply


def _wait_for_earlier(msg: RoutedMessage, deps: BranchDeps, run: Callable[[UserState], _Decision],
                      decision: _Decision, version: StateVersion, sleep: Callable[[float], None]
                      ) -> tuple[_Decision, StateVersion]:
    """Decide again on a fresh read after each pause of :data:`ORDER_WAIT_BACKOFF_SECONDS` while ``decision`` holds
    ``msg`` back (the read writes nothing then; once the earlier turns are final, that update writes the answer)."""
    for pause in ORDER_WAIT_BACKOFF_SECONDS:
        if not decision.held_back_by:
            break
        log.debug("message_id=%s (seq %d) waits %.1f s for earlier message(s) seq %s", msg.message_id, msg.seq,
                  pause, decision.held_back_by)
        sleep(pause)
        decision, version = deps.state_store.update_versioned(msg.user_id, msg.channel_url, run,
                                                              keep_turn=msg.message_id)
    return decision, version


def retry_delay(decision: _Decision) -> int:
    """Seconds before a held-back message is looked at again: :data:`ORDER_RETRY_DELAY_SECONDS` per earlier turn
    not final yet, at most :data:`ORDER_RETRY_MAX_DELAY_SECONDS`."""
    return min(ORDER_RETRY_DELAY_SECONDS * max(len(decision.held_back_by), 1), ORDER_RETRY_MAX_DELAY_SECONDS)


def _chain_claim(msg: RoutedMessage, deps: BranchDeps) -> int | None:
    """``since_ms`` of the send claim the intent stage's admission took for ``msg``'s chain, when ``msg`` is a
    first delivery (dequeue count 1, or handed over in process) carrying the sealed version of that admission
    whose turn holds the claim; else None. A redelivered routed message (dequeue count 2+) is not the chain's: its
    previous delivery may have answered and its reply may be on its way."""
    version = msg.state_version
    if version is None or msg.replayed or dequeue_count() not in (None, 1) or not deps.state_store.trusts(version):
        return None  # an operator's replay re-sends the original body: its version is long stale
    turn = version.turn(msg.message_id)
    if turn is None or turn.sending is None or turn.sending.dedup_id != reply_dedup_id(msg.message_id):
        return None
    return turn.sending.since_ms


def _release_chain_claim(msg: RoutedMessage, owner_since: int, deps: BranchDeps) -> None:
    def release(state: UserState) -> None:
        turn = state.turn_for(msg.message_id)
        if turn is not None and turn.sending is not None and turn.sending.since_ms == owner_since \
                and turn.sending.dedup_id == reply_dedup_id(msg.message_id) and not turn.answered:
            turn.sending = None
    try:
        deps.state_store.update(msg.user_id, msg.channel_url, release)
    except GatewayError as exc:  # the claim expires by itself after the lease
        log.warning("could not release the send claim of message_id=%s: %s", msg.message_id, exc.reason)


def _deferred(msg: RoutedMessage, deps: BranchDeps,
              run: Callable[[UserState], _Decision]) -> tuple[_Decision, StateVersion] | None:
    """The chain's fresh answer decided on the admission's version and not written (the reply sender writes it
    with the "sent" mark, one write), or None when it must be written now: the message was held back before (the
    version is older than an earlier message's answer), or the decision is anything but a fresh answer holding the
    chain's claim (held back, silent, a recorded answer again, a change the version cannot express).

    Sound because the version shows every earlier turn of the user final when the answer is decided on it (else
    the decision is to hold back), and no later message is answered before this one is final (ordering): nothing
    the decision depends on can change until the reply sender writes it, and that write is conditional on the
    admission's ETag (412: it re-applies this answer on a fresh read)."""
    turn = msg.state_version.turn(msg.message_id) if msg.state_version is not None else None
    if msg.order_waits or turn is None or turn.sending is None:
        return None
    lease = turn.sending.until_ms(deps.settings.reply_send_lease_seconds * 1000) - turn.sending.since_ms
    if now_ms() - turn.sending.since_ms >= lease * DEFER_LEASE_SHARE:
        return None
    assert msg.state_version is not None
    done = deps.state_store.defer(msg.state_version, run)
    if done is None or done[0].answered_with is None or not done[0].claimed:
        return None
    return done


def apology_reply(msg: InboundMessage | RoutedMessage | ReplyMessage, catalog: ResponseCatalog,
                  settings: Settings) -> ReplyMessage:
    """The reply a user gets when their message could not be processed or answered (it was poisoned): never
    silence. In the message's language (else the text's, else the default); ``dedup_id`` ``apology-<message_id>``."""
    language = getattr(msg, "language", None) or detect_language(getattr(msg, "text", "")) \
        or settings.default_language
    return ReplyMessage.following(msg, text=catalog.render(APOLOGY_KEY, language), language=language,
                                  route=getattr(msg, "route", None), reply_key=APOLOGY_KEY,
                                  dedup_id=apology_dedup_id(msg.message_id), seq=getattr(msg, "seq", 0))
