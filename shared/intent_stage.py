"""Intent stage: load the user's state, classify the utterance, pick the branch route.

Input: :class:`~shared.models.InboundMessage` (queue ``chat-inbound``).
Output: a :class:`~shared.models.RoutedMessage` for ``route-<route>``, or None
when the message must not be routed: the conversation is handed off to a human
(the bot stays silent), or it is another delivery of a message already admitted;
plus, for a message the bot did not understand well, a :class:`~shared.models.ReviewCapture`
for the review inbox (:func:`run`; :mod:`shared.review` decides, with no I/O).
Admission (duplicate check + per-user sequence number) is one ETag-guarded
state update (one read, one write), so two deliveries racing each other cannot both be admitted. A first
delivery's admission also takes the reply's send claim for its chain (:func:`claim_for_chain`) and the routed
message carries the document's version after it (:class:`~shared.state.StateVersion`): the handler decides on it
without reading and defers its write to the reply sender's (:func:`shared.branch_handlers.handle`). A failed intent
call releases that claim.
A message longer than the intent service accepts is classified on an excerpt
(:mod:`shared.utterance`); the routed message keeps the full text.
Errors: :class:`~shared.errors.TransientError` / :class:`~shared.errors.PermanentError`
from the state store and the intent client propagate to the caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from shared.errors import GatewayError
from shared.language import detect_language
from shared.models import InboundMessage, IntentPrediction, ReviewCapture, RoutedMessage, now_ms
from shared.ports import IntentPort, StateStore, TelemetryPort
from shared.routes import FALLBACK, UNSUPPORTED
from shared.review import capture_for
from shared.routing import choose_route
from shared.settings import Settings
from shared.processing import dequeue_count
from shared.state import SendClaim, Turn, UserState, reply_dedup_id
from shared.telemetry import DISABLED
from shared.utterance import intent_excerpt

log = logging.getLogger(__name__)

#: Lease of the send claim an admission takes for its chain (seconds): the chain's first deliveries normally send
#: within milliseconds; a chain that died (a crashed worker) holds its message's reply only this long, its
#: redeliveries then claim it. Short on purpose: the handler defers its write only in the first quarter of it and
#: the reply sender sends without a read only in the first half (later, both work as with a handler's claim).
CHAIN_CLAIM_LEASE_SECONDS = 4
#: How many intents and entities travel to the branch handler.
MAX_INTENTS, MAX_ENTITIES = 10, 20


@dataclass(frozen=True)
class Admission:
    """What the intent stage's state update decided about one inbound message."""

    verdict: Literal["admitted", "duplicate", "silent"]
    seq: int = 0
    pending_slot: str | None = None
    language: str | None = None
    claimed: bool = False


def admit(msg: InboundMessage, state: UserState, settings: Settings, now: int,
          first_delivery: bool = False) -> Admission:
    """Record ``msg`` as the user's next turn, atomically with the state (run inside ``StateStore.update``).

    With ``first_delivery`` (this queue message was not handed out before) an admitted message also gets the
    reply's send claim for this chain (``claimed``; see :func:`claim_for_chain`).

    - a turn for this ``message_id`` from another delivery (another correlation id) -> ``duplicate``
      (a SendBird webhook retry: the first delivery is being handled by its own queue message);
    - the same delivery again (a queue redelivery) after the message was handled (answered, sent or
      failed) -> ``duplicate``; before that -> re-admitted with its recorded sequence number;
      an operator's replay of a message that got an apology or failed -> re-admitted;
    - no turn any more (evicted from the bounded history) but admitted within the webhook replay window
      (``recent_message_ids``) -> ``duplicate`` (a replayed capture, whatever the history length);
    - the conversation is handed off -> recorded as ``silent``;
    - otherwise a new turn with the next per-user sequence number.
    """
    window_ms = (settings.webhook_replay_window_seconds + settings.webhook_max_clock_skew_seconds) * 1000
    state.forget_message_ids_before(now - window_ms)
    turn = state.turn_for(msg.message_id)
    if turn is not None:
        if turn.correlation_id not in (None, msg.correlation_id):
            return Admission("duplicate", turn.seq)
        if turn.status == "silent":
            return Admission("silent", turn.seq)
        handled = turn.status in ("answered", "sent", "failed")
        if handled and not (msg.replayed and (turn.apologized or turn.status == "failed")):
            return Admission("duplicate", turn.seq)
        claimed = first_delivery and not msg.replayed and claim_for_chain(turn, settings, now)
        return Admission("admitted", turn.seq, state.pending_slot, state.language, claimed)
    if state.seen_recently(msg.message_id):
        return Admission("duplicate")
    if state.is_handed_off(now):
        turn = state.admit(msg.message_id, msg.correlation_id, msg.received_at_ms, settings.state_history_limit,
                           status="silent", channel_url=msg.channel_url)
        return Admission("silent", turn.seq)
    turn = state.admit(msg.message_id, msg.correlation_id, msg.received_at_ms, settings.state_history_limit,
                       channel_url=msg.channel_url)
    claimed = first_delivery and not msg.replayed and claim_for_chain(turn, settings, now)
    return Admission("admitted", turn.seq, state.pending_slot, state.language, claimed)


def claim_for_chain(turn: Turn, settings: Settings, now: int) -> bool:
    """Take the send claim of the real reply (``reply-<message_id>``, ``since_ms`` = now) for the chain this
    admission starts, unless a live claim is there. The chain's first deliveries (routed message, reply message)
    then hold it: the handler defers its write to the reply sender's, which sends and writes the answer and the
    "sent" mark at once (:func:`shared.branch_handlers.handle`). True when taken."""
    if turn.sending is not None and now < turn.sending.until_ms(settings.reply_send_lease_seconds * 1000):
        return False
    turn.sending = SendClaim(dedup_id=reply_dedup_id(turn.message_id), since_ms=now,
                             lease_ms=CHAIN_CLAIM_LEASE_SECONDS * 1000)
    return True


def release_chain_claim(msg: InboundMessage | RoutedMessage, state: UserState) -> None:
    """Drop the chain's send claim of ``msg``'s turn (its intent call failed: the retry takes a claim of its own
    instead of waiting for this one to expire)."""
    turn = state.turn_for(msg.message_id)
    if turn is not None and turn.status == "received" and turn.sending is not None \
            and turn.sending.dedup_id == reply_dedup_id(msg.message_id):
        turn.sending = None


@dataclass(frozen=True)
class IntentStageDeps:
    """What the intent stage needs: the state store, the intent service, the settings and telemetry."""

    state_store: StateStore
    intent: IntentPort
    settings: Settings
    telemetry: TelemetryPort = DISABLED


@dataclass(frozen=True)
class StageResult:
    """What the intent stage writes: the routed message (None: not routed) and the review capture (None: none)."""

    routed: RoutedMessage | None
    review: ReviewCapture | None = None

    def with_hop(self, stage: str, queue_wait_ms: int, started_at_ms: int,
                 dependency_ms: dict[str, float] | None = None, traceparent: str | None = None) -> "StageResult":
        """Both messages with this stage's hop (:meth:`shared.models.QueueMessageBase.with_hop`)."""
        def hop(m: Any) -> Any:
            return None if m is None else m.with_hop(stage, queue_wait_ms, started_at_ms, dependency_ms, traceparent)
        return StageResult(hop(self.routed), hop(self.review))


def classify(msg: InboundMessage, deps: IntentStageDeps, *, clock: Callable[[], int] = now_ms) -> RoutedMessage | None:
    """The routed message of :func:`run` (see there)."""
    return run(msg, deps, clock=clock).routed


def run(msg: InboundMessage, deps: IntentStageDeps, *, clock: Callable[[], int] = now_ms) -> StageResult:
    """Route one inbound message (see module docstring). ``clock`` returns epoch ms.

    Errors: :class:`~shared.errors.TransientError` / :class:`~shared.errors.PermanentError` from the state store
    and the intent service. Telemetry: events ``DuplicateDropped``, ``MessageSilenced``, ``IntentClassified``;
    metrics ``intent_confidence``, ``fallback_count``, ``intent_service_errors``.
    """
    s = deps.settings
    first = dequeue_count() in (None, 1)
    admission, version = deps.state_store.update_versioned(
        msg.user_id, msg.channel_url, lambda state: admit(msg, state, s, clock(), first), keep_turn=msg.message_id)
    routed_version = version if admission.claimed else None
    if admission.verdict != "admitted":
        log.info("message_id=%s not routed: %s (correlation_id=%s)", msg.message_id,
                 "duplicate delivery" if admission.verdict == "duplicate" else "conversation handed off",
                 msg.correlation_id)
        deps.telemetry.event("DuplicateDropped" if admission.verdict == "duplicate" else "MessageSilenced", _ids(msg))
        return StageResult(None)
    if msg.message_type == "FILE":
        return StageResult(RoutedMessage.following(msg, route=UNSUPPORTED, top_intent=None, seq=admission.seq,
                                                   language=admission.language or s.default_language,
                                                   state_version=routed_version))
    language = detect_language(msg.text) or admission.language or s.default_language
    try:
        prediction, intent_ms = _predict(msg, language, deps)
    except Exception:
        if admission.claimed:
            _release_quietly(msg, deps)
        raise
    route, slot_filled = choose_route(prediction, admission.pending_slot, s.intent_confidence_threshold)
    _report(msg, language, prediction, route, intent_ms, deps.telemetry)
    routed = RoutedMessage.following(
        msg, route=route, text=msg.text, language=language, top_intent=prediction.top_intent,
        confidence_score=prediction.confidence_score, intents=prediction.intents[:MAX_INTENTS],
        entities=prediction.entities[:MAX_ENTITIES], slot_filled=slot_filled, seq=admission.seq,
        state_version=routed_version,
    )
    return StageResult(routed, capture_for(routed, prediction.model_version, s))


def _release_quietly(msg: InboundMessage, deps: IntentStageDeps) -> None:
    try:
        deps.state_store.update(msg.user_id, msg.channel_url, lambda state: release_chain_claim(msg, state))
    except GatewayError as exc:  # the claim expires by itself after the lease
        log.warning("could not release the send claim of message_id=%s: %s", msg.message_id, exc.reason)


def _predict(msg: InboundMessage, language: str, deps: IntentStageDeps) -> tuple[IntentPrediction, float]:
    """The intent service's prediction for ``msg`` (its excerpt, :mod:`shared.utterance`) and the call's ms."""
    started = time.perf_counter()
    try:
        prediction = deps.intent.analyze(intent_excerpt(msg.text, deps.settings.intent_max_text_chars), language,
                                         participant_id=msg.user_id, item_id=str(msg.message_id),
                                         request_id=msg.correlation_id)
    except GatewayError:
        deps.telemetry.metric("intent_service_errors", 1)
        raise
    return prediction, (time.perf_counter() - started) * 1000


def _report(msg: InboundMessage, language: str, prediction: IntentPrediction, route: str, intent_ms: float,
            telemetry: TelemetryPort) -> None:
    telemetry.event("IntentClassified", {
        **_ids(msg), "language": language, "text": msg.text, "intent": prediction.top_intent, "route": route,
        "entities": ",".join(sorted({e.category for e in prediction.entities})) or None,
        "model_version": prediction.model_version,
    }, {"confidence": prediction.confidence_score, "intent_latency_ms": intent_ms})
    telemetry.metric("intent_confidence", prediction.confidence_score, route=route)
    if route == FALLBACK:
        telemetry.metric("fallback_count", 1)


def _ids(msg: InboundMessage) -> dict[str, Any]:
    return {"correlation_id": msg.correlation_id, "message_id": msg.message_id, "channel_url": msg.channel_url,
            "user_id": msg.user_id}
