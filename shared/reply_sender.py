"""Reply sender: deliver one :class:`~shared.models.ReplyMessage` through the SendBird Platform API, once.

Exactly-once visible delivery, built from two records in the user's state (ETag-guarded) and SendBird's
``dedup_id``:

1. **claim**: the turn of the reply's ``message_id`` gets ``sending = {dedup_id, since_ms}`` before the send.
   For a real reply it is already there: taken by the intent stage's admission for the message's chain (short
   lease, :func:`shared.intent_stage.claim_for_chain`) or by the branch handler's write; the reply message carries
   the sealed :class:`~shared.state.StateVersion` showing it (and, when the handler deferred its write, the
   handler's answer unwritten). The first delivery of that message uses the claim without a read while it is
   younger than half its lease (the other half is left for the send: nobody may take the claim before it expires).
   Every other reply (a redelivery, an apology, a copy re-emitted by the handler, an older claim) claims on a fresh
   read, :func:`claim`: if the turn's ``sent_dedup_ids`` already holds this ``dedup_id``, the reply was sent before
   (a queue redelivery): nothing is sent; if another sender holds a live claim, the reply is re-queued to look again
   after the claim expires (an apology too while a chain's claim has no answer recorded: that chain may still
   send); a redelivery of the message holding the claim takes it over at once (the host hands a message out again
   only after its previous invocation ended).
2. **send** with the ``dedup_id``.
3. **mark sent**: ``dedup_id`` appended to ``sent_dedup_ids``, status ``sent``, claim cleared, together with the
   handler's deferred answer when there is one (:func:`record_answer`); written on the version the message carries
   (no read), or read-modify-write when the document changed since.

On the happy path this is one Cosmos DB write and no read (see README, "Cosmos DB work per message").
A crash between 2 and 3 leaves a claim; the next delivery sends again with the same ``dedup_id``, which SendBird
de-duplicates.

Only replies the gateway itself produced are sent (defence in depth: queue messages are not signed, so
whoever can write to ``chat-reply`` could otherwise make the bot post any text to any channel): a reply
must belong to a turn the intent stage admitted for that user, in that channel, and carry exactly the text
and response key the branch handler recorded for it; an apology must be the catalog's apology text. Any
other reply is refused with :class:`~shared.errors.PermanentError` (poisoned with the reason, nothing sent,
no turn created). Outcomes:

- ``"sent"``; ``"duplicate"`` (sent before, nothing done); ``"superseded"``: the real reply and the
  apology of one message exclude each other (an apology after the real answer was sent, or a real answer after an
  apology unless the message is an operator's replay), so the user sees one answer. An apology that finds the real
  answer recorded but nobody sending it (no live claim: its reply message was lost) sends that answer instead
  (``reply-<message_id>``; a late copy of the real reply is then a duplicate): never silence;
- ``"rescheduled"``: SendBird 429 (re-queued invisible for ``X-RateLimit-RetryAfter`` seconds,
  ``reschedules`` + 1, at most ``REPLY_MAX_RESCHEDULES``) or a live claim elsewhere;
- 5xx / timeouts: :class:`~shared.errors.TransientError` propagates (host retry), claim released;
- other 4xx: :class:`~shared.errors.PermanentError` propagates (poison), claim released.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from shared.catalog import ResponseCatalog
from shared.errors import GatewayError, PermanentError, RateLimited
from shared.models import REPLY_QUEUE, ReplyMessage, now_ms
from shared.ports import QueuePort, SendBirdPort, StateStore, TelemetryPort
from shared.settings import Settings
from shared.processing import dequeue_count
from shared.state import APOLOGY_KEY, SendClaim, StateVersion, Turn, UserState, reply_dedup_id
from shared.telemetry import DISABLED

log = logging.getLogger(__name__)

#: Share of the claim's lease within which the handler's (or the chain's) claim is used without a read: the rest of the
#: lease is left for the send itself (SendBird timeout and in-process retries), so that nobody else can take the
#: expired claim while this sender is still sending.
FAST_PATH_LEASE_SHARE = 0.5
#: What became of one reply message.
Delivery = Literal["sent", "duplicate", "superseded", "rescheduled"]


def reply_data(reply: ReplyMessage) -> str:
    """SendBird message ``data`` (an opaque string): JSON with the correlation id, route, intent, score and timings.

    ``timings``: ``received_at_ms`` (intake, epoch ms), ``hops`` (each stage's queue wait, duration and
    outbound-call ms) and ``reply_queue_wait_ms`` (time on ``chat-reply`` before this send).
    """
    return json.dumps({
        "correlation_id": reply.correlation_id, "route": reply.route,
        "intent": reply.top_intent, "confidence": round(reply.confidence_score, 4), "reply_key": reply.reply_key,
        "timings": {"received_at_ms": reply.received_at_ms, "hops": [h.model_dump() for h in reply.hops],
                    "reply_queue_wait_ms": max(0, now_ms() - reply.enqueued_at_ms)},
    }, ensure_ascii=False)


def owned_turn(state: UserState, reply: ReplyMessage, settings: Settings, catalog: ResponseCatalog) -> Turn:
    """The turn ``reply`` answers, after checking the gateway produced it (see module docstring).

    An apology for a message that never got a turn (its admission failed) gets one here. Raises
    :class:`~shared.errors.PermanentError` naming what does not match.
    """
    apology = reply.reply_key == APOLOGY_KEY
    if apology and not catalog.knows(APOLOGY_KEY, reply.language, reply.text):
        raise PermanentError(f"reply refused: {reply.dedup_id} claims to be the apology but its text differs "
                             "from the catalog's")
    turn = state.turn_for(reply.message_id)
    if turn is None:
        if not apology:
            raise PermanentError(f"reply refused: message_id {reply.message_id} has no turn the gateway admitted "
                                 "for this user")
        return state.admit(reply.message_id, reply.correlation_id, reply.received_at_ms,
                           settings.state_history_limit, channel_url=reply.channel_url)
    if turn.channel_url is not None and turn.channel_url != reply.channel_url:
        raise PermanentError(f"reply refused: message_id {reply.message_id} was admitted in another channel")
    if not apology and (turn.reply_key, turn.reply_text) != (reply.reply_key, reply.text):
        raise PermanentError(f"reply refused: its text or response key differs from the answer recorded for "
                             f"message_id {reply.message_id}")
    return turn


@dataclass(frozen=True)
class ReplyDeps:
    """What the reply sender needs: the ports, the settings and the catalog (for the apology check)."""

    sendbird: SendBirdPort
    queues: QueuePort
    state_store: StateStore
    settings: Settings
    catalog: ResponseCatalog
    telemetry: TelemetryPort = DISABLED


def claim(reply: ReplyMessage, state: UserState, *, settings: Settings, catalog: ResponseCatalog,
          now: int, owner_since: int | None = None) -> tuple[str, int]:
    """Take the send claim on ``reply``'s turn (pure; runs in the ETag-guarded update). Returns ``(verdict,
    wait_ms)``: ``claimed``; ``duplicate`` (sent before); ``superseded`` (the message has its one answer);
    ``busy`` with the ms until another sender's claim expires; ``answer`` (an apology for a message whose real
    answer is recorded and unsent, nobody claiming it: the claim is taken for the real reply, to be sent instead).

    ``owner_since``: the ``since_ms`` of the claim the branch handler took for this very queue message (its
    first delivery, see :func:`deliver`); a claim still carrying it is this sender's own, renewed whatever its age."""
    lease_ms = settings.reply_send_lease_seconds * 1000
    apology = reply.reply_key == APOLOGY_KEY
    turn = owned_turn(state, reply, settings, catalog)
    if reply.dedup_id in turn.sent_dedup_ids:
        return "duplicate", 0
    # One visible answer per message: the real reply and the apology exclude each other.
    if apology and reply_dedup_id(reply.message_id) in turn.sent_dedup_ids:
        return "superseded", 0
    if not apology and turn.apologized and not reply.replayed:
        return "superseded", 0
    own = turn.sending is not None and owner_since is not None and \
        (turn.sending.dedup_id, turn.sending.since_ms) == (reply.dedup_id, owner_since)
    if turn.sending and now < turn.sending.until_ms(lease_ms) and not own:
        # another sender holds a live claim: the same reply's, the apology's, or (for an apology) the real reply's,
        # answer recorded or not: wait for it to be sent (then duplicate / superseded) or to expire
        return "busy", turn.sending.until_ms(lease_ms) - now
    if apology and turn.answered:
        # the real answer is recorded and nobody is sending it: its reply message was lost (the handler's invocation
        # died after its write and before the host wrote its output binding, on its last attempt). The user gets
        # that answer, under its own dedup_id, rather than an apology or nothing (:func:`deliver`).
        turn.sending = SendClaim(dedup_id=reply_dedup_id(reply.message_id), since_ms=now)
        return "answer", 0
    turn.sending = SendClaim(dedup_id=reply.dedup_id, since_ms=now)
    return "claimed", 0


def release(reply: ReplyMessage, state: UserState) -> None:
    """Drop ``reply``'s send claim (it was not sent), recording the answer it carries unwritten first (so that its
    rescheduled or retried copy finds it recorded)."""
    record_answer(reply, state)
    turn = state.turn_for(reply.message_id)
    if turn and turn.sending and turn.sending.dedup_id == reply.dedup_id:
        turn.sending = None


def mark_sent(reply: ReplyMessage, state: UserState, *, settings: Settings, catalog: ResponseCatalog,
              now: int) -> None:
    """Record that SendBird accepted ``reply``."""
    turn = owned_turn(state, reply, settings, catalog)
    if reply.dedup_id not in turn.sent_dedup_ids:
        turn.sent_dedup_ids = [*turn.sent_dedup_ids, reply.dedup_id]
    turn.status, turn.sent_at_ms, turn.sending = "sent", now, None
    turn.reply_key, turn.reply_text = reply.reply_key, reply.text


def deliver(reply: ReplyMessage, deps: ReplyDeps, *, clock: Callable[[], int] = now_ms) -> Delivery:
    """Send ``reply`` at most once (see module docstring).

    Errors: :class:`~shared.errors.PermanentError` (a reply the gateway did not produce; SendBird 4xx; too many
    reschedules), :class:`~shared.errors.TransientError` (SendBird 5xx/timeouts, the state store).
    Telemetry: events ``ReplySent`` (with the latencies, ms), ``ReplyDeduplicated``, ``SendBirdThrottled``;
    metrics ``e2e_latency_ms``, ``sendbird_429_count``.
    """
    s, store = deps.settings, deps.state_store
    held = _handler_claim(reply, deps)
    owned = held.since_ms if held is not None else None
    first = dequeue_count() in (None, 1)
    if held is not None and first:
        lease = held.until_ms(s.reply_send_lease_seconds * 1000) - held.since_ms
        if clock() - held.since_ms < lease * FAST_PATH_LEASE_SHARE:
            return _send(reply, deps, clock, base=reply.state_version)
    def take(state: UserState) -> tuple[str, int, ReplyMessage | None]:
        if owned is not None:
            record_answer(reply, state)
        verdict, wait = claim(reply, state, settings=s, catalog=deps.catalog, now=clock(), owner_since=owned)
        return verdict, wait, (_recorded_reply(reply, state) if verdict == "answer" else None)

    verdict, wait_ms, answer = store.update(reply.user_id, reply.channel_url, take)
    if answer is not None:
        log.warning("message_id=%s: its answer was recorded but its reply message was lost; sending that answer "
                    "instead of an apology", reply.message_id)
        return _send(answer, deps, clock, base=None)
    if verdict in ("duplicate", "superseded"):
        log.info("reply %s for message_id=%s not sent: %s", reply.dedup_id, reply.message_id,
                 "sent before" if verdict == "duplicate" else "the message already has its answer")
        deps.telemetry.event("ReplyDeduplicated", {**_ids(reply), "reply_key": reply.reply_key, "reason": verdict})
        return "duplicate" if verdict == "duplicate" else "superseded"
    if verdict == "busy":
        return _reschedule(reply, deps.queues, s, max(1.0, wait_ms / 1000), "another sender holds the claim")
    return _send(reply, deps, clock, base=None)


def _recorded_reply(apology: ReplyMessage, state: UserState) -> ReplyMessage:
    """The real reply the handler recorded for ``apology``'s message (its text and response key, ``reply-<id>``)."""
    turn = state.turn_for(apology.message_id)
    assert turn is not None and turn.reply_text and turn.reply_key  # claim() said "answer": the turn is answered
    return apology.model_copy(update={"text": turn.reply_text, "reply_key": turn.reply_key, "state_version": None,
                                      "dedup_id": reply_dedup_id(apology.message_id)})


def _handler_claim(reply: ReplyMessage, deps: ReplyDeps) -> SendClaim | None:
    """The send claim held for this reply message (taken by the branch handler's write, or the admission's claim
    of the chain when the handler deferred its write), or None.

    The claim is this message's when it carries the sealed version that write returned and whose turn holds that
    claim and exactly this reply (channel, response key and text). Used without a read by the message's first
    delivery (see :func:`deliver`); a later delivery of the same message (dequeue count 2+) comes only after the
    first one ended (the host keeps a message invisible while its invocation runs), so it takes the claim over on
    a fresh read (:func:`claim` ``owner_since``) instead of waiting for the lease to expire.
    """
    version = reply.state_version
    if version is None or reply.reply_key == APOLOGY_KEY or not deps.state_store.trusts(version):
        return None
    turn = version.turn(reply.message_id)
    if turn is None or turn.sending is None or turn.sending.dedup_id != reply.dedup_id:
        return None
    if reply.dedup_id in turn.sent_dedup_ids or turn.channel_url not in (None, reply.channel_url):
        return None
    if (turn.reply_key, turn.reply_text) != (reply.reply_key, reply.text):
        return None
    return turn.sending


def record_answer(reply: ReplyMessage, state: UserState) -> None:
    """Write the handler's answer that ``reply``'s sealed version holds unwritten (a deferred handler write,
    :func:`shared.branch_handlers.handle`) into ``state``: the turn's answer fields and the handler's state
    changes, as the handler decided them (the reply is, or is about to be, what the user sees). Nothing when the
    version holds nothing unwritten."""
    version = reply.state_version
    if version is None or not version.unwritten:
        return
    decided = version.state()
    source, turn = decided.turn_for(reply.message_id), state.turn_for(reply.message_id)
    if source is None or turn is None or turn.status not in ("received", "answered"):
        return  # the turn is gone (erased: owned_turn refuses the reply) or final (sent, silent, failed)
    for name in ("status", "at_ms", "route", "intent", "confidence_score", "reply_key", "reply_text"):
        setattr(turn, name, getattr(source, name))
    for name in ("pending_slot", "handoff_until_ms", "language", "channel_url"):
        setattr(state, name, getattr(decided, name))


def _send(reply: ReplyMessage, deps: ReplyDeps, clock: Callable[[], int], base: StateVersion | None) -> Delivery:
    """Send under a claim this sender holds; mark it sent (on ``base`` without a read when given)."""
    started = time.perf_counter()
    try:
        deps.sendbird.send_bot_message(reply.channel_url, reply.text, reply.dedup_id, data=reply_data(reply))
    except RateLimited as exc:
        deps.telemetry.metric("sendbird_429_count", 1)
        deps.telemetry.event("SendBirdThrottled", {**_ids(reply), "reason": exc.reason},
                             {"retry_after_seconds": exc.retry_after_seconds, "reschedules": reply.reschedules})
        deps.state_store.update(reply.user_id, reply.channel_url, lambda state: release(reply, state))
        return _reschedule(reply, deps.queues, deps.settings, exc.retry_after_seconds, f"SendBird 429: {exc.reason}")
    except GatewayError:
        _release_quietly(deps.state_store, reply)
        raise
    sendbird_ms = (time.perf_counter() - started) * 1000

    def sent(state: UserState) -> None:
        if base is not None:
            record_answer(reply, state)
        mark_sent(reply, state, settings=deps.settings, catalog=deps.catalog, now=clock())

    deps.state_store.update_versioned(reply.user_id, reply.channel_url, sent, base=base)
    _report_sent(reply, _ids(reply), sendbird_ms, deps.telemetry)
    return "sent"


def _ids(reply: ReplyMessage) -> dict[str, Any]:
    return {"correlation_id": reply.correlation_id, "message_id": reply.message_id,
            "channel_url": reply.channel_url, "user_id": reply.user_id}


def _report_sent(reply: ReplyMessage, ids: dict[str, Any], sendbird_ms: float, telemetry: TelemetryPort) -> None:
    now = now_ms()
    hops = {h.stage: h for h in reply.hops}
    intent_hop = hops.get("chat-inbound")
    handler_hop = next((h for h in reply.hops if h.stage.startswith("route-")), None)
    measurements = {
        "e2e_latency_ms": max(0, now - reply.sendbird_created_at_ms),
        "gateway_latency_ms": max(0, now - reply.received_at_ms),
        "reply_queue_wait_ms": max(0, now - reply.enqueued_at_ms - sendbird_ms),
        "sendbird_ms": sendbird_ms, "confidence": reply.confidence_score, "reschedules": reply.reschedules,
    }
    if intent_hop:
        measurements.update(intent_queue_wait_ms=intent_hop.queue_wait_ms, intent_stage_ms=intent_hop.duration_ms,
                            intent_latency_ms=intent_hop.dependency_ms.get("intent", 0))
    if handler_hop:
        measurements.update(handler_queue_wait_ms=handler_hop.queue_wait_ms, handler_stage_ms=handler_hop.duration_ms)
    telemetry.event("ReplySent", {
        **ids, "route": reply.route, "intent": reply.top_intent,
        "reply_key": reply.reply_key, "language": reply.language, "reply_text": reply.text,
    }, measurements)
    telemetry.metric("e2e_latency_ms", measurements["e2e_latency_ms"], route=reply.route)


def mark_failed(reply: ReplyMessage, state_store: StateStore) -> None:
    """Record that ``reply`` could not be delivered (it was poisoned), so later messages are not held back.
    A reply without an admitted turn (e.g. one refused as not the gateway's) changes nothing."""

    def fail(state: UserState) -> None:
        turn = state.turn_for(reply.message_id)
        if turn is not None and turn.status != "sent":
            turn.status, turn.sending = "failed", None

    state_store.update(reply.user_id, reply.channel_url, fail)


def _reschedule(reply: ReplyMessage, queues: QueuePort, settings: Settings, delay_seconds: float,
                why: str) -> Delivery:
    if reply.reschedules >= settings.reply_max_reschedules:
        raise PermanentError(f"not delivered after {reply.reschedules} reschedules; last: {why}")
    again = reply.model_copy(update={"reschedules": reply.reschedules + 1, "enqueued_at_ms": now_ms(),
                                     "state_version": None})
    queues.send(REPLY_QUEUE, again.to_queue_text(), delay_seconds=delay_seconds)
    log.warning("reply %s for message_id=%s rescheduled in %.1f s (%s; reschedule %d)", reply.dedup_id,
                reply.message_id, delay_seconds, why, again.reschedules)
    return "rescheduled"


def _release_quietly(state_store: StateStore, reply: ReplyMessage) -> None:
    try:
        state_store.update(reply.user_id, reply.channel_url, lambda state: release(reply, state))
    except GatewayError as exc:  # the claim expires by itself after the lease
        log.warning("could not release the send claim of %s: %s", reply.dedup_id, exc.reason)
