"""Webhook intake: decide what to do with one SendBird webhook POST.

Spec: SendBird Platform API v3 webhooks, event ``group_channel:message_send``
(see ``../shared/reference/sendbird.md``). This module is plain code: it takes
the raw body and headers and returns an :class:`IntakeDecision` (HTTP status,
JSON body, and at most one :class:`~shared.models.InboundMessage` to enqueue).
It never calls any later stage, so the webhook is answered in milliseconds.

Answers (every non-2xx carries ``{"error": {"code", "message"}}``):

=====  =========================================================================
413    body larger than ``WEBHOOK_MAX_BODY_BYTES`` (checked before anything else)
401    ``x-sendbird-signature`` missing or not the HMAC of the raw body
400    body not UTF-8 JSON (or nested too deeply to parse), or a ``message_send`` event missing
       required fields or with a ``message_id`` outside 0..2^53-1
200    ``{"status": "ignored", "reason": ...}``: other categories, messages from
       the bot itself or an ignored sender, admin messages (``ADMM``), empty text,
       and ``stale_webhook``: ``payload.created_at`` older than ``WEBHOOK_REPLAY_WINDOW_SECONDS``
       or more than ``WEBHOOK_MAX_CLOCK_SKEW_SECONDS`` in the future (a replayed capture;
       answered 200 so SendBird does not retry it, not enqueued, event ``WebhookIgnored``)
200    ``{"status": "accepted", ...}``: one inbound message enqueued (text or file)
=====  =========================================================================
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import signature
from shared.models import MAX_MESSAGE_ID, MAX_UTTERANCE_CHARS, InboundMessage, now_ms
from shared.settings import Settings
from shared.ports import TelemetryPort
from shared.telemetry import DISABLED

MESSAGE_SEND = "group_channel:message_send"


class _Sender(BaseModel):
    model_config = ConfigDict(extra="ignore")
    user_id: str = Field(min_length=1, max_length=256)


class _Channel(BaseModel):
    model_config = ConfigDict(extra="ignore")
    channel_url: str = Field(min_length=1, max_length=512)


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore")
    message_id: int = Field(ge=0, le=MAX_MESSAGE_ID)
    created_at: int = Field(ge=0, description="epoch ms")
    message: str | None = None
    filename: str | None = Field(default=None, max_length=1024)


class MessageSendEvent(BaseModel):
    """The fields of ``group_channel:message_send`` the gateway uses; others are ignored."""

    model_config = ConfigDict(extra="ignore")
    category: Literal["group_channel:message_send"]
    type: Literal["MESG", "FILE", "ADMM"]
    sender: _Sender
    channel: _Channel
    payload: _Payload


@dataclass(frozen=True)
class IntakeDecision:
    """What the HTTP trigger answers, and the message to enqueue (None: enqueue nothing)."""

    status: int
    body: dict[str, Any]
    inbound: InboundMessage | None = field(default=None)


def _error(status: int, code: str, message: str) -> IntakeDecision:
    return IntakeDecision(status, {"error": {"code": code, "message": message}})


def _ignored(reason: str, **extra: Any) -> IntakeDecision:
    return IntakeDecision(200, {"status": "ignored", "reason": reason, **extra})


def handle_webhook(body: bytes, headers: Mapping[str, str], settings: Settings, *,
                   telemetry: TelemetryPort = DISABLED, traceparent: str | None = None,
                   clock: Callable[[], int] = now_ms) -> IntakeDecision:
    """Validate and classify one webhook delivery; report it (events ``MessageReceived``,
    ``WebhookIgnored``, ``WebhookRejected``).

    ``body`` is the raw request body (bytes, exactly as received: the signature
    covers these bytes); ``headers`` is case-insensitive or lower-cased;
    ``traceparent`` (the intake's span) goes on the enqueued message; ``clock`` returns epoch ms
    (the replay window is measured against it).
    """
    decision = _decide(body, headers, settings, traceparent, clock)
    _report(decision, telemetry)
    return decision


def _report(d: IntakeDecision, telemetry: TelemetryPort) -> None:
    if d.inbound is not None:
        m = d.inbound
        telemetry.metric("messages_received", 1)
        telemetry.event("MessageReceived", {
            "correlation_id": m.correlation_id, "message_id": m.message_id, "channel_url": m.channel_url,
            "user_id": m.user_id, "message_type": m.message_type, "text": m.text,
        }, {"webhook_delay_ms": max(0, m.received_at_ms - m.sendbird_created_at_ms), "text_length": len(m.text)})
    elif d.status == 200:
        telemetry.event("WebhookIgnored", {"reason": d.body.get("reason"), "message_id": d.body.get("message_id"),
                                           "channel_url": d.body.get("channel_url")})
    else:
        telemetry.event("WebhookRejected", {"status_code": d.status, "reason": d.body["error"]["code"]})


def _decide(body: bytes, headers: Mapping[str, str], settings: Settings, traceparent: str | None,
            clock: Callable[[], int] = now_ms) -> IntakeDecision:
    rejected = _check_size_and_signature(body, headers, settings)
    if rejected is not None:
        return rejected
    parsed = _parse(body)
    if isinstance(parsed, IntakeDecision):
        return parsed
    msg, received = parsed, clock()
    ignored = _ignore(msg, settings, received)
    if ignored is not None:
        return ignored
    inbound = InboundMessage(
        correlation_id=uuid.uuid4().hex, message_id=msg.payload.message_id, channel_url=msg.channel.channel_url,
        user_id=msg.sender.user_id, sendbird_created_at_ms=msg.payload.created_at, received_at_ms=received,
        enqueued_at_ms=received, message_type="FILE" if msg.type == "FILE" else "MESG", text=_text(msg)[:MAX_UTTERANCE_CHARS],
        file_name=msg.payload.filename if msg.type == "FILE" else None, traceparent=traceparent,
    )
    return IntakeDecision(200, {"status": "accepted", "correlation_id": inbound.correlation_id, **_ids(msg)}, inbound)


def _check_size_and_signature(body: bytes, headers: Mapping[str, str], settings: Settings) -> IntakeDecision | None:
    if len(body) > settings.webhook_max_body_bytes:
        return _error(413, "payload_too_large",
                      f"body is {len(body)} bytes; the limit is {settings.webhook_max_body_bytes} bytes")
    sig = headers.get(signature.SIGNATURE_HEADER)
    if not sig:
        return _error(401, "missing_signature", f"header {signature.SIGNATURE_HEADER} is required")
    if not signature.verify(body, sig, settings.sendbird_api_token):
        return _error(401, "invalid_signature",
                      f"{signature.SIGNATURE_HEADER} is not the HMAC-SHA256 of the body with the API token")
    return None


def _parse(body: bytes) -> MessageSendEvent | IntakeDecision:
    """The ``message_send`` event in ``body``, or the answer when it is not one."""
    try:
        event = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return _error(400, "invalid_json", f"body is not UTF-8 JSON: {exc}")
    except RecursionError:
        return _error(400, "invalid_json", "body is nested too deeply to parse")
    if not isinstance(event, dict):
        return _error(400, "invalid_payload", "body must be a JSON object")
    category = event.get("category")
    if not isinstance(category, str):
        return _error(400, "invalid_payload", "field 'category' (string) is required")
    if category != MESSAGE_SEND:
        return _ignored("category_not_handled", category=category)
    try:
        return MessageSendEvent.model_validate(event)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        return _error(400, "invalid_payload", f"{MESSAGE_SEND} event is invalid: {problems}")


def _ignore(msg: MessageSendEvent, settings: Settings, now: int) -> IntakeDecision | None:
    """The answer for an event that is not enqueued (bot, ignored sender, admin message, empty, stale), else None."""
    ids = _ids(msg)
    if msg.sender.user_id in settings.ignored_sender_ids:
        reason = "sent_by_bot" if msg.sender.user_id == settings.sendbird_bot_user_id else "sender_ignored"
        return _ignored(reason, **ids)
    if msg.type == "ADMM":
        return _ignored("admin_message", **ids)
    if msg.type == "MESG" and not _text(msg):
        return _ignored("empty_text", **ids)
    age_s = (now - msg.payload.created_at) / 1000
    if age_s > settings.webhook_replay_window_seconds or -age_s > settings.webhook_max_clock_skew_seconds:
        return _ignored("stale_webhook", **ids, age_seconds=round(age_s))
    return None


def _text(msg: MessageSendEvent) -> str:
    return (msg.payload.message or "").strip() if msg.type == "MESG" else ""


def _ids(msg: MessageSendEvent) -> dict[str, Any]:
    return {"message_id": msg.payload.message_id, "channel_url": msg.channel.channel_url}
